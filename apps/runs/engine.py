"""The next-step decision: a pure function of the version's graph and the recorded step states.

No clock, randomness or I/O here, so any run can be replayed and tested from its history.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SUCCEEDED_LIKE = frozenset({"succeeded", "skipped"})
FAILED_LIKE = frozenset({"failed", "cancelled"})


@dataclass(frozen=True)
class Decision:
    """What happens next: steps to start, and whether (and how) the run is finished."""

    start: tuple[str, ...]
    run_status: str | None  # None while the run goes on; else "succeeded" or "failed"


def decide(graph: Mapping[str, Any], states: Mapping[str, str]) -> Decision:
    """Given step states by key, return the steps to start and the run's terminal status if any.

    Steps run in graph order: the first step that has not started starts once every step before it
    succeeded (or was skipped); a failed step fails the run.
    """
    for step in graph.get("steps", []):
        state = states.get(step["key"], "pending")
        if state in SUCCEEDED_LIKE:
            continue
        if state in FAILED_LIKE:
            return Decision(start=(), run_status="failed")
        if state == "pending":
            return Decision(start=(step["key"],), run_status=None)
        return Decision(start=(), run_status=None)  # queued, running or waiting: nothing new yet
    return Decision(start=(), run_status="succeeded")


def run_output(graph: Mapping[str, Any], outputs: Mapping[str, Any]) -> Any:
    """The run's output: the output of its last step."""
    steps = graph.get("steps", [])
    return outputs.get(steps[-1]["key"]) if steps else None
