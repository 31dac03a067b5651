"""`python -m bench.profile_b1`: cProfile of the engine's per-step path for the B1 workflow, in one process.

No worker consumes: each queued step is executed here with `step_run_execute` (what the Celery task calls),
so the profile covers claim, execute, the result transaction, the on-commit outbox relay (a real send to
the broker) and the progress publish; only the broker hop and Celery's own task handling are missing.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import sys
import time

from bench import stack

STEPS = 40


def main() -> int:
    with stack.services() as svc:
        stack.database_recreate(svc)
        os.environ.update(svc.env())
        import django

        django.setup()
        import redis

        from apps.runs.executor import step_run_execute
        from apps.runs.models import Run, StepRun
        from apps.runs.services import run_start
        from bench.b1 import steps_spec
        from bench.common import bench_user, linear_workflow

        actor = bench_user()
        workflow = linear_workflow(actor, f"profile {time.time_ns()}", steps_spec(STEPS))
        profiler = cProfile.Profile()
        for repetition in range(3):  # the first pass warms imports and caches and is not profiled
            run, _ = run_start(actor=actor, workflow=workflow, inputs={})
            started = time.perf_counter()
            if repetition:
                profiler.enable()
            while (step := StepRun.objects.filter(run=run, state=StepRun.State.QUEUED).first()) is not None:
                step_run_execute(step_run_id=step.pk)
            profiler.disable()
            elapsed = (time.perf_counter() - started) * 1000
            status = Run.objects.get(pk=run.pk).status
            print(
                f"pass {repetition}: {elapsed:.0f} ms for {STEPS} steps in-process "
                f"({elapsed / STEPS:.2f} ms/step), {status}"
            )
        redis.Redis.from_url(svc.redis_url).flushdb()  # the relayed messages nobody consumed
        profiler.dump_stats(str(stack.REPO_ROOT / ".data" / "bench" / "profile_b1.prof"))
        stats = pstats.Stats(profiler, stream=sys.stdout)
        stats.sort_stats("cumulative").print_stats(40)
        stats.sort_stats("tottime").print_stats(20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
