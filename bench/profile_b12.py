"""`python -m bench.profile_b12`: where an agent step's tool call goes, in one process (B12's workflows).

No worker consumes: each queued step run (the agent's turns, its tool calls, a workflow tool's child run) is
executed here with `step_run_execute`, and each engine task the transactions write to the outbox
(`runs.child_finished`) with the task's own function, so the profile covers every claim, execution, result
transaction, outbox relay and publish of a B12 run against B12's scripted inference server; only the broker hops
and Celery's task handling are missing. Prints the time per kind of work per tool call, then cProfile's top
functions. `BENCH_B12_VARIANT=direct` profiles the data.transform tool instead of the workflow tool.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import sys
import time
from collections import defaultdict

from bench import stack

PASSES = 3  # the first warms imports and caches and is not profiled


def main() -> int:
    from bench import b12

    variant = os.environ.get("BENCH_B12_VARIANT", "workflow")
    with stack.services() as svc, b12.inference_server("profile-b12") as server:
        stack.database_recreate(svc)
        os.environ.update(svc.env())
        os.environ.update(AIOS_INFERENCE_URL=server.url, AIOS_INFERENCE_KIND="tgi")
        import django

        django.setup()
        import redis
        from django.db import connection

        from apps.runs import tasks
        from apps.runs.executor import step_run_execute
        from apps.runs.models import Outbox, Run, StepRun
        from apps.runs.outbox import CHILD_FINISHED_TASK
        from apps.runs.services import run_start
        from bench.common import bench_user

        actor = bench_user()
        workflow = b12.agent_workflows(actor)[variant]
        profiler = cProfile.Profile()
        done: set[int] = set(Outbox.objects.filter(task=CHILD_FINISHED_TASK).values_list("pk", flat=True))
        for repetition in range(PASSES):
            run, _ = run_start(actor=actor, workflow=workflow, inputs={})
            spent: dict[str, float] = defaultdict(float)
            counts: dict[str, int] = defaultdict(int)
            statements: dict[str, int] = defaultdict(int)
            current = ["driver"]

            def count(execute, sql, params, many, context, current=current, statements=statements):  # type: ignore[no-untyped-def]
                statements[current[0]] += 1
                return execute(sql, params, many, context)

            began = time.perf_counter()
            if repetition:
                profiler.enable()
            while True:
                family = [run.pk, *Run.objects.filter(parent_step_run__run=run).values_list("pk", flat=True)]
                queued = (
                    StepRun.objects.filter(state=StepRun.State.QUEUED, run__in=family)
                    .order_by("pk")
                    .values_list("pk", "step_key", "run_id")
                    .first()
                )
                if queued is not None:
                    pk, key, run_id = queued
                    kind = "agent turn" if key == "agent" else ("tool call" if run_id == run.pk else "child run's step")
                    started, current[0] = time.perf_counter(), kind
                    with connection.execute_wrapper(count):
                        step_run_execute(step_run_id=pk)
                    spent[kind] += time.perf_counter() - started
                    current[0] = "driver"
                    counts[kind] += 1
                    continue
                row = (
                    Outbox.objects.filter(task=CHILD_FINISHED_TASK)
                    .exclude(pk__in=done)
                    .order_by("pk")
                    .values_list("pk", "args")
                    .first()
                )
                if row is None:
                    break
                done.add(row[0])
                started, current[0] = time.perf_counter(), "child_finished task"
                with connection.execute_wrapper(count):
                    tasks.child_finished(*row[1])
                spent["child_finished task"] += time.perf_counter() - started
                current[0] = "driver"
                counts["child_finished task"] += 1
            profiler.disable()
            elapsed = time.perf_counter() - began
            run.refresh_from_db()
            print(f"\npass {repetition} ({variant} tool): {elapsed * 1000:.0f} ms in-process, {run.status}")
            for kind, seconds in spent.items():
                print(
                    f"  {kind:22} x{counts[kind]:3}  {seconds * 1000:8.1f} ms  "
                    f"{seconds * 1000 / b12.CALLS:7.1f} ms per tool call  "
                    f"{seconds * 1000 / counts[kind]:6.1f} ms each  "
                    f"{statements[kind] / counts[kind]:5.1f} SQL statements each"
                )
            print(f"  {'all':22}       {elapsed * 1000:8.1f} ms  {elapsed * 1000 / b12.CALLS:7.1f} ms per tool call")
        redis.Redis.from_url(svc.redis_url).flushdb()  # the relayed messages nobody consumed
        profiler.dump_stats(str(stack.REPO_ROOT / ".data" / "bench" / f"profile_b12_{variant}.prof"))
        stats = pstats.Stats(profiler, stream=sys.stdout)
        stats.sort_stats("cumulative").print_stats(45)
        stats.sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
