"""Driving runs inside the test process: the test stands in for the worker and the sweeper, so engine
behaviour can be checked step by step without timing (integration tests use real workers instead)."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from apps.runs import tasks
from apps.runs.executor import step_run_execute
from apps.runs.models import Outbox, Run, StepRun
from apps.runs.outbox import CANCEL_RUN_TASK, CHILD_FINISHED_TASK
from apps.runs.sweeper import timers_fire_due

# The outbox's engine tasks, run in this process instead of by a worker.
ENGINE_TASKS = {CHILD_FINISHED_TASK: tasks.child_finished, CANCEL_RUN_TASK: tasks.cancel}


def drive(run: Run, *, max_steps: int = 1000) -> Run:
    """Execute queued steps of the run (and of its child runs), and the engine tasks their transactions wrote
    to the outbox (a child telling its parent, a parent cancelling a child), until nothing is left; returns
    the run fresh. Engine tasks run in the order they were written, each once per call (a repeat of one is a
    no-op, as it is for a worker that gets a message twice)."""
    done: set[int] = set()
    for _ in range(max_steps):
        family = [run.pk, *Run.objects.filter(parent_step_run__run=run).values_list("pk", flat=True)]
        queued = StepRun.objects.filter(state=StepRun.State.QUEUED, run__in=family).order_by("pk").first()
        if queued is not None:
            step_run_execute(step_run_id=queued.pk)
            continue
        row = Outbox.objects.filter(task__in=ENGINE_TASKS).exclude(pk__in=done).order_by("pk").first()
        if row is None:
            break
        done.add(row.pk)
        ENGINE_TASKS[row.task](*row.args)
    run.refresh_from_db()
    return run


def advance_clock(seconds: float) -> int:
    """Fire the timers that would be due `seconds` from now (the sweeper's job)."""
    return timers_fire_due(timezone.now() + timedelta(seconds=seconds))


def states(run: Run) -> dict[str, str]:
    return dict(StepRun.objects.filter(run=run).values_list("step_key", "state"))
