"""B2: 10 CPU-heavy steps vs the same Celery chain doing the same CPU work.

Each step computes fibonacci(BENCH_CPU_N) the naive way (n=32: about 0.3 s of one core here, the anchors'
"fibo(33) shape"). Product: a 10-step workflow of the bench-only `bench.cpu` step type (bench/steps.py).
Peer: the B1 peer chain with the same computation before its two writes and one publish.
"""

from __future__ import annotations

import os
import time

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
from bench.steps import fibonacci

STEPS = 10
CPU_N = int(os.environ.get("BENCH_CPU_N", "32"))


def run(svc: Services) -> list[Goal]:
    started = time.perf_counter()
    fibonacci(CPU_N)
    compute_ms = (time.perf_counter() - started) * 1000
    actor = bench_user()
    steps = [{"key": f"c{i}", "type": "bench.cpu", "config": {"n": CPU_N}} for i in range(STEPS)]
    workflow = linear_workflow(actor, f"B2 {STEPS} cpu steps {time.time_ns()}", steps)
    run_and_wait(actor, workflow)
    peer_chain_run(STEPS, CPU_N)
    product: list[float] = []
    peer: list[float] = []
    for _ in range(REPETITIONS):
        timing = run_and_wait(actor, workflow)
        if timing.status != "succeeded":
            raise RuntimeError(f"B2 run #{timing.run_id} ended {timing.status}")
        product.append(timing.seconds * 1000)
        peer.append(peer_chain_run(STEPS, CPU_N) * 1000)
    p, q = median(product), median(peer)
    table(
        f"B2 {STEPS} CPU steps of fibonacci({CPU_N}) (~{compute_ms:.0f} ms each in the bench process), "
        f"{REPETITIONS} repetitions",
        ["side", "median ms", "min", "max", "ms/step", "overhead ms/step vs compute"],
        [
            ["AIOS run (10 x bench.cpu)", p, min(product), max(product), p / STEPS, p / STEPS - compute_ms],
            ["peer: Celery chain, same work", q, min(peer), max(peer), q / STEPS, q / STEPS - compute_ms],
        ],
    )
    print(f"AIOS minus peer: {(p - q) / STEPS:.2f} ms/step")
    goals = [Goal("B2", "ratio_to_peer", p / q, "<=", 1.02)]
    print_goals(goals)
    return goals
