"""Driving runs inside the test process: the test stands in for the worker and the sweeper, so engine
behaviour can be checked step by step without timing (integration tests use real workers instead)."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from apps.runs.executor import step_run_execute
from apps.runs.models import Run, StepRun
from apps.runs.services import timers_fire_due


def drive(run: Run, *, max_steps: int = 1000) -> Run:
    """Execute queued steps of the run (and of its child runs) until none is queued; returns it fresh."""
    for _ in range(max_steps):
        queued = (
            StepRun.objects.filter(state=StepRun.State.QUEUED)
            .filter(run__in=[run.pk, *Run.objects.filter(parent_step_run__run=run).values_list("pk", flat=True)])
            .order_by("pk")
            .first()
        )
        if queued is None:
            break
        step_run_execute(step_run_id=queued.pk)
    run.refresh_from_db()
    return run


def advance_clock(seconds: float) -> int:
    """Fire the timers that would be due `seconds` from now (the sweeper's job)."""
    return timers_fire_due(timezone.now() + timedelta(seconds=seconds))


def states(run: Run) -> dict[str, str]:
    return dict(StepRun.objects.filter(run=run).values_list("step_key", "state"))
