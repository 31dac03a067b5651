"""What every benchmark shares: the goal-line format, tables, and driving the product through its services."""

from __future__ import annotations

import itertools
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

REPETITIONS = int(os.environ.get("BENCH_REPS", "5"))
# Polling only decides when to read the product's own timestamps; it is not part of any measured interval.
POLL_SECONDS = 0.01
RUN_TIMEOUT_SECONDS = 300.0


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print a plain-text table, numbers right-aligned."""
    cells = [[f"{c:.2f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    print(f"\n{title}")
    print("  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(headers, widths, strict=True))))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))


@dataclass(frozen=True)
class Goal:
    """One machine-readable result line: `B1 ratio_to_peer 1.18 goal <=1.25 ok`."""

    bench: str
    metric: str
    value: float
    op: str  # "<=" or ">="
    target: float

    @property
    def met(self) -> bool:
        return self.value <= self.target if self.op == "<=" else self.value >= self.target

    def line(self) -> str:
        return (
            f"{self.bench} {self.metric} {self.value:.2f} goal {self.op}{self.target:g} {'ok' if self.met else 'miss'}"
        )


def print_goals(goals: Sequence[Goal]) -> None:
    print()
    for goal in goals:
        print(goal.line(), flush=True)


# Driving the product ---------------------------------------------------------------------------------------

PASSWORD = "bench-password-not-secret"


def bench_user() -> Any:
    """The analyst who owns and runs every bench workflow."""
    from apps.accounts.models import User
    from apps.accounts.services import user_create

    existing = User.objects.filter(username="bench").first()
    return existing or user_create(username="bench", password=PASSWORD, roles=["analyst"])


def linear_workflow(actor: Any, name: str, steps: list[dict[str, Any]]) -> Any:
    """Create and publish a workflow whose steps run one after another, through the product's services."""
    from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish

    edges = [{"from": a["key"], "to": b["key"]} for a, b in itertools.pairwise(steps)]
    workflow = workflow_create(actor=actor, name=name)
    version = workflow_version_create(
        actor=actor,
        workflow=workflow,
        graph={"steps": steps, "edges": edges},
        input_schema={"type": "object", "properties": {}},
    )
    workflow_version_publish(actor=actor, version=version)
    return workflow


@dataclass(frozen=True)
class RunTiming:
    run_id: int
    status: str
    seconds: float  # Run.finished_at - Run.started_at, the product's own timestamps


def run_and_wait(actor: Any, workflow: Any) -> RunTiming:
    """Start a run through `run_start` and wait until it finishes."""
    from apps.runs.models import Run
    from apps.runs.services import run_start

    run, _ = run_start(actor=actor, workflow=workflow, inputs={})
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    while True:
        status, started, finished = Run.objects.filter(pk=run.pk).values_list("status", "started_at", "finished_at")[0]
        if finished is not None and started is not None:
            return RunTiming(run.pk, status, (finished - started).total_seconds())
        if time.monotonic() > deadline:
            raise RuntimeError(f"run #{run.pk} did not finish within {RUN_TIMEOUT_SECONDS:g} s (status {status})")
        time.sleep(POLL_SECONDS)


_chain_ids = iter(range(1, 1_000_000))


def peer_chain_run(steps: int, cpu_n: int = 0, *, writes: bool = True, publish: bool = True) -> float:
    """Run one peer chain; returns seconds from just before sending to the last step's recorded finish."""
    from django.db import connection

    from bench.peer import peer_chain_start

    chain_id = next(_chain_ids) + int(time.time()) * 1000
    started = peer_chain_start(chain_id, steps, cpu_n, writes=writes, publish=publish)
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    with connection.cursor() as cursor:
        while True:
            cursor.execute(
                "SELECT extract(epoch FROM finished_at) FROM bench_peer_step WHERE chain_id = %s AND position = %s "
                "AND finished_at IS NOT NULL",
                [chain_id, steps - 1],
            )
            row = cursor.fetchone()
            if row is not None:
                return float(row[0]) - started
            if time.monotonic() > deadline:
                raise RuntimeError(f"peer chain {chain_id} did not finish within {RUN_TIMEOUT_SECONDS:g} s")
            time.sleep(POLL_SECONDS)


def eager_env(eager: bool) -> dict[str, str]:
    """The worker environment for B1's two modes: eager dispatch on (the product's default) or off."""
    return {"AIOS_EAGER_DISPATCH": "true" if eager else "false"}
