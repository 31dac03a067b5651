"""Celery tasks for runs: thin doors into the executor, child runs and the sweeper. Each is safe to run twice."""

from __future__ import annotations

import contextlib
from typing import Any

from celery import Task, shared_task
from django.conf import settings

from apps.core.exceptions import Conflict
from apps.runs.async_engine import async_engine
from apps.runs.children import child_run_finished
from apps.runs.executor import step_run_execute
from apps.runs.mailbox_poll import MAILBOX_POLL_TASK, MAILBOXES_POLL_TASK, mailbox_poll, mailbox_polls_due
from apps.runs.models import Run
from apps.runs.outbox import CANCEL_RUN_TASK, CHILD_FINISHED_TASK, EXECUTE_STEP_TASK
from apps.runs.services import run_cancel
from apps.runs.singleton import lease_claim, lease_holder_name, lease_release, lease_renew
from apps.runs.sweeper import sweep
from apps.runs.trigger_events import TRIGGER_EVENT_TASK
from apps.runs.triggers import event_relay

# Only one sweep at a time across all workers; a sweep that finds the duty taken simply returns.
SWEEP_LEASE = "sweep"


# Steps from these queues run on the asynchronous executor (apps.runs.async_engine), not in the task's thread.
ASYNC_QUEUES = ("inference",)


@shared_task(bind=True, name=EXECUTE_STEP_TASK, acks_late=True, reject_on_worker_lost=True)
def execute_step(self: Task, step_run_id: int) -> None:
    """Execute one queued step (a duplicate delivery finds it claimed and returns). A step from the inference
    queue is handed to this process's asynchronous executor: the task returns once it is claimed."""
    queue = (self.request.delivery_info or {}).get("routing_key")
    if settings.AIOS_ASYNC_STEPS and queue in ASYNC_QUEUES:
        async_engine().submit(step_run_id)
        return
    step_run_execute(step_run_id=step_run_id)


@shared_task(name=CHILD_FINISHED_TASK, acks_late=True, reject_on_worker_lost=True)
def child_finished(child_run_id: int) -> None:
    """Tell a finished child run's parent (a repeat finds the parent moved on and does nothing)."""
    child_run_finished(child_run_id=child_run_id)


@shared_task(name=CANCEL_RUN_TASK, acks_late=True, reject_on_worker_lost=True)
def cancel(run_id: int, reason: str) -> None:
    """Cancel a child run for its parent (a repeat finds it finished and does nothing)."""
    with contextlib.suppress(Conflict, Run.DoesNotExist):
        run_cancel(run=Run(pk=run_id), actor=None, reason=reason)


# --- triggers ---
@shared_task(name=TRIGGER_EVENT_TASK, acks_late=True, reject_on_worker_lost=True)
def trigger_event(run_id: int) -> None:
    """Start the workflows whose event triggers follow a finished run (a repeat starts nothing new)."""
    event_relay(run_id=run_id)


# --- triggers: email triggers that read a mailbox (apps/runs/mailbox_poll.py) ---
@shared_task(name=MAILBOXES_POLL_TASK, acks_late=False, ignore_result=True)
def mailboxes_poll() -> int:
    """The beat's tick: one `runs.mailbox_poll` per mailbox trigger due; a lost tick is replaced by the next."""
    due = mailbox_polls_due()
    for trigger_id in due:
        mailbox_poll_task.delay(trigger_id)
    return len(due)


@shared_task(name=MAILBOX_POLL_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def mailbox_poll_task(trigger_id: int) -> None:
    """Poll one trigger's mailbox (a second delivery finds it polled or being polled, and returns)."""
    mailbox_poll(trigger_id=trigger_id)


# --- end triggers ---


@shared_task(name="runs.sweep", acks_late=False, ignore_result=True)
def sweep_task() -> dict[str, Any]:
    """The periodic repair loop (see apps.runs.sweeper.sweep), one at a time across the fleet.

    The duty is a lease row (apps.runs.singleton), renewed between the sweep's phases; a sweep whose lease ran
    out stops at the next phase. Each phase is safe to run concurrently anyway (conditional updates), so the
    lease saves duplicate work and keeps sweeps from crowding each other, and a sweeper that dies mid-sweep
    holds the duty only until its lease runs out (AIOS_SWEEP_LEASE_SECONDS, by default two sweep intervals).
    """
    holder = lease_holder_name()
    seconds = settings.AIOS_SWEEP_LEASE_SECONDS
    if not lease_claim(name=SWEEP_LEASE, holder=holder, seconds=seconds):
        return {"skipped": True}
    try:
        return sweep(renew=lambda: lease_renew(name=SWEEP_LEASE, holder=holder, seconds=seconds))
    finally:
        lease_release(name=SWEEP_LEASE, holder=holder)
