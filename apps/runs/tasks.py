"""Celery tasks for runs: thin doors into the executor and the sweeper. Each is safe to run twice."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.db import connection

from apps.runs.executor import step_run_execute
from apps.runs.services import sweep

# Only one sweep at a time across all workers; a sweep that finds the lock taken simply returns.
_SWEEP_LOCK_KEY = 0x53574550  # "SWEP"


@shared_task(name="runs.execute_step", acks_late=True, reject_on_worker_lost=True)
def execute_step(step_run_id: int) -> None:
    """Execute one queued step (a duplicate delivery finds it claimed and returns)."""
    step_run_execute(step_run_id=step_run_id)


@shared_task(name="runs.sweep", acks_late=False, ignore_result=True)
def sweep_task() -> dict[str, Any]:
    """The periodic repair loop (see apps.runs.services.sweep)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [_SWEEP_LOCK_KEY])
        if not cursor.fetchone()[0]:
            return {"skipped": True}
    try:
        return sweep()
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [_SWEEP_LOCK_KEY])
