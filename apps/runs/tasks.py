"""Celery tasks for runs: thin doors into the executor. Each takes an id and is safe to run twice."""

from __future__ import annotations

from celery import shared_task

from apps.runs.executor import step_run_execute


@shared_task(name="runs.execute_step", acks_late=True, reject_on_worker_lost=True)
def execute_step(step_run_id: int) -> None:
    """Execute one queued step (a duplicate delivery finds it claimed and returns)."""
    step_run_execute(step_run_id=step_run_id)
