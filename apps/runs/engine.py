"""The next-step decision: a pure function of the version's graph and the recorded step states.

No clock, randomness or I/O here, so any run can be replayed and tested from its history.

Joins (see apps/workflows/graph.py for the graph model): "all" (the default) starts a step once every
incoming edge is resolved and at least one was taken, so dead branches are ignored, an if/else merges
naturally and a parallel fan-in waits for every branch; "any" starts it as soon as one edge is taken.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from apps.workflows.graph import ERROR, SUCCESS, Edge, Graph

DONE_STATES = frozenset({"succeeded", "failed", "skipped", "cancelled"})
ACTIVE_STATES = frozenset({"queued", "running", "waiting"})


@dataclass(frozen=True)
class StepRecord:
    """What the engine needs to know of one step: its state and, for branching steps, the branch taken."""

    state: str
    branch: str | None = None


@dataclass(frozen=True)
class Decision:
    """What happens next: steps to start, steps to skip, and the run's terminal status if it has one."""

    start: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()
    run_status: str | None = None  # None while the run goes on; else "succeeded" or "failed"
    failed_step: str | None = None  # the unhandled failure that failed the run


def _edge_status(edge: Edge, records: Mapping[str, StepRecord]) -> str:
    """ "taken", "dead" or "open" (its source has not finished)."""
    source = records.get(edge.source, StepRecord("pending"))
    if source.state not in DONE_STATES:
        return "open"
    if source.state == "succeeded":
        if edge.when == SUCCESS:
            return "taken"
        if edge.when == ERROR:
            return "dead"
        return "taken" if source.branch == edge.when else "dead"
    if source.state == "failed":
        return "taken" if edge.when == ERROR else "dead"
    return "dead"  # skipped or cancelled: nothing flows from it


def decide(graph: Mapping[str, Any] | Graph, records: Mapping[str, StepRecord]) -> Decision:
    """Given each step's record, return which pending steps start, which are skipped, and whether the
    run is finished. Steps without a record are pending. Skips cascade within one call."""
    parsed = graph if isinstance(graph, Graph) else Graph.parse(graph)
    current = dict(records)
    for key, record in current.items():
        if record.state == "failed" and not parsed.handles_errors(key):
            return Decision(run_status="failed", failed_step=key)
    start: list[str] = []
    skip: list[str] = []
    changed = True
    while changed:  # a skip can make its successors decidable, so iterate to a fixed point
        changed = False
        for key in parsed.keys:
            if current.get(key, StepRecord("pending")).state != "pending" or key in start:
                continue
            statuses = [_edge_status(edge, current) for edge in parsed.incoming[key]]
            if not statuses or (parsed.joins[key] == "any" and "taken" in statuses):
                start.append(key)
            elif "open" not in statuses:
                if "taken" in statuses:
                    start.append(key)
                else:
                    skip.append(key)
                    current[key] = StepRecord("skipped")
                    changed = True
    if start or any(current.get(k, StepRecord("pending")).state in ACTIVE_STATES for k in parsed.keys):
        return Decision(start=tuple(start), skip=tuple(skip))
    return Decision(skip=tuple(skip), run_status="succeeded")


def run_output(graph: Mapping[str, Any], outputs: Mapping[str, Any]) -> Any:
    """The run's output: the sink steps' outputs (a single sink's output as it is, several by key).
    A version may name its output step with `graph["output"]`."""
    if graph.get("output"):
        return outputs.get(graph["output"])
    sinks = [key for key in Graph.parse(graph).sinks() if outputs.get(key) is not None]
    if len(sinks) == 1:
        return outputs[sinks[0]]
    return {key: outputs[key] for key in sinks}


def reusable_before(graph: Mapping[str, Any] | Graph, restart_key: str, succeeded: Iterable[str]) -> set[str]:
    """Steps whose recorded outputs a restart from `restart_key` reuses: every succeeded step that is
    neither the restart step nor downstream of it. `graph` may be parsed already (one parse for many keys)."""
    parsed = graph if isinstance(graph, Graph) else Graph.parse(graph)
    redo = parsed.descendants(restart_key) | {restart_key}
    return {key for key in succeeded if key not in redo}
