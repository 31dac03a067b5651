"""B1: a 40-step sequential workflow of trivial steps vs a bare Celery chain doing each step's durable work.

Product: a published 40-step `data.transform` workflow started with `run_start`; the time is
Run.finished_at - Run.started_at (the product's own timestamps, so it includes the first dispatch and the
final commit). Peer: `celery.chain` of 40 `bench.peer_step` tasks on the same worker processes and broker,
timed from just before sending to the last task's recorded finish. Runs alternate product/peer so that
machine noise hits both alike; medians of BENCH_REPS (default 5) after one warm-up each.

It runs twice, on workers with eager dispatch on (the default: the worker that commits a step runs the next
one itself) and off (every step through the broker, the same architecture as the peer's chain): goals
<= 1.0 and <= 1.25 of the peer.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Any

from bench import b8
from bench.common import (
    REPETITIONS,
    Goal,
    bench_user,
    linear_workflow,
    median,
    peer_chain_run,
    print_goals,
    run_and_wait,
    table,
)
from bench.stack import Services

STEPS = 40


def steps_spec(count: int) -> list[dict[str, Any]]:
    return [{"key": f"s{i}", "type": "data.transform", "config": {"fields": {"n": "1"}}} for i in range(count)]


@dataclass(frozen=True)
class Result:
    product_step_ms: float
    peer_step_ms: float
    product_commits: b8.Commits
    goals: list[Goal]


def run(svc: Services, *, eager: bool = True) -> Result:
    """One B1 block on workers started with eager dispatch on or off (AIOS_EAGER_DISPATCH)."""
    mode = "eager dispatch on" if eager else "eager dispatch off"
    actor = bench_user()
    workflow = linear_workflow(actor, f"B1 {STEPS} steps {time.time_ns()}", steps_spec(STEPS))
    run_and_wait(actor, workflow)  # warm-up: imports, connections, caches in both pool processes
    peer_chain_run(STEPS)
    product: list[float] = []
    peer: list[float] = []
    # Not goals: where the peer's time goes (a chain alone, then with the writes), measured alongside.
    bare: list[float] = []
    writes_only: list[float] = []
    last_run = 0
    for _ in range(REPETITIONS):
        timing = run_and_wait(actor, workflow)
        if timing.status != "succeeded":
            raise RuntimeError(f"B1 run #{timing.run_id} ended {timing.status}")
        product.append(timing.seconds * 1000)
        last_run = timing.run_id
        peer.append(peer_chain_run(STEPS) * 1000)
        bare.append(peer_chain_run(STEPS, writes=False, publish=False) * 1000)
        writes_only.append(peer_chain_run(STEPS, publish=False) * 1000)

    def row(label: str, values: list[float]) -> list[Any]:
        return [label, median(values), min(values), max(values), median(values) / STEPS]

    rows = [
        row("AIOS run (run_start, 40 x data.transform)", product),
        row("peer: Celery chain, 2 writes + 1 publish", peer),
        row("  (breakdown) chain of no-op tasks", bare),
        row("  (breakdown) chain + 2 writes, no publish", writes_only),
    ]
    table(
        f"B1 {STEPS} sequential steps, {REPETITIONS} repetitions, {mode}",
        ["side", "median ms", "min", "max", "ms/step"],
        rows,
    )
    print(
        "runs (ms):  product " + " ".join(f"{v:.0f}" for v in product) + " | peer " + " ".join(f"{v:.0f}" for v in peer)
    )
    phases_table(last_run)
    product_commits, _ = b8.count_commits(svc, "product (AIOS run)", STEPS, lambda: run_and_wait(actor, workflow))
    peer_commits, _ = b8.count_commits(svc, "peer (Celery chain)", STEPS, lambda: peer_chain_run(STEPS))
    b8.commits_table([product_commits, peer_commits])
    ratio = median(product) / median(peer)
    if eager:
        goals = [Goal("B1", "ratio_to_peer", ratio, "<=", 1.0)]
    else:
        goals = [Goal("B1", "ratio_to_peer_no_eager", ratio, "<=", 1.25)]
    print_goals(goals)
    return Result(median(product) / STEPS, median(peer) / STEPS, product_commits, goals)


def phases_table(run_id: int) -> None:
    """Where an AIOS step's time goes, from the StepRun timestamps the engine records (medians over steps).

    queued_at is stamped inside the previous step's result transaction, started_at by the claim, finished_at
    inside the step's own result transaction; so "queued -> claimed" is the rest of that transaction, its
    commit, the on-commit outbox relay and progress publish, the broker hop and the claim UPDATE.
    """
    from apps.runs.models import Run, StepRun

    run = Run.objects.get(pk=run_id)
    steps = list(StepRun.objects.filter(run_id=run_id).order_by("position"))

    def ms(a: Any, b: Any) -> float:
        return (b - a).total_seconds() * 1000

    assert run.started_at is not None and run.finished_at is not None
    first_queue = ms(run.started_at, steps[0].queued_at)
    claim = [ms(s.queued_at, s.started_at) for s in steps]
    execute = [ms(s.started_at, s.finished_at) for s in steps]
    advance = [ms(a.finished_at, b.queued_at) for a, b in itertools.pairwise(steps)]
    tail = ms(steps[-1].finished_at, run.finished_at)
    table(
        f"B1 AIOS step phases, run #{run_id} (StepRun timestamps; median over {len(steps)} steps)",
        ["phase", "median ms", "max ms", "share of run"],
        [
            ["run start -> step 0 queued", first_queue, first_queue, first_queue / ms(run.started_at, run.finished_at)],
            [
                "queued -> claimed (commit, relay, publish, broker)",
                median(claim),
                max(claim),
                sum(claim) / ms(run.started_at, run.finished_at),
            ],
            [
                "claimed -> finished (load, execute, result tx)",
                median(execute),
                max(execute),
                sum(execute) / ms(run.started_at, run.finished_at),
            ],
            [
                "finished -> next queued (same tx: audit, advance)",
                median(advance),
                max(advance),
                sum(advance) / ms(run.started_at, run.finished_at),
            ],
            ["last step finished -> run finished", tail, tail, tail / ms(run.started_at, run.finished_at)],
        ],
    )
