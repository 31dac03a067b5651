"""The outbox: work for Celery, written in the transaction that calls for it and relayed after it commits.

Postgres is the truth and Celery only rings the bell: a row is sent right after its transaction commits
(`transaction.on_commit`), and the sweeper relays whatever a crash or a broker outage left unsent. Messages
go through `celery.current_app`, the app `aios_web` loads with Django, so this module needs nothing from the
process wiring in `workers/`.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import timedelta
from typing import Any

from celery import current_app
from django.db import DatabaseError, connection, transaction
from django.db.models import F
from django.utils import timezone

from apps.runs.faults import crash_point
from apps.runs.models import Outbox, StepRun
from apps.steps.registry import step_type_get

EXECUTE_STEP_TASK = "runs.execute_step"
# Work that concerns another run than the one a transaction locked (see the lock-order rule in
# apps/runs/lifecycle.py): a finished child run tells its parent; a parent cancels its children.
CHILD_FINISHED_TASK = "runs.child_finished"
CANCEL_RUN_TASK = "runs.cancel"
ENGINE_QUEUE = "engine"

logger = logging.getLogger(__name__)


def outbox_dispatch(step_runs: list[StepRun]) -> None:
    """Write one row per step run to execute (same transaction) and relay them once it commits."""
    if step_runs:
        _outbox_write(
            [Outbox(task=EXECUTE_STEP_TASK, queue=step_type_get(s.step_type).queue, args=[s.pk]) for s in step_runs]
        )


def outbox_task(task: str, args: list[Any]) -> None:
    """Write one row for an engine task (same transaction) and relay it once it commits."""
    _outbox_write([Outbox(task=task, queue=ENGINE_QUEUE, args=args)])


def _outbox_write(rows: list[Outbox]) -> None:
    written = Outbox.objects.bulk_create(rows)
    transaction.on_commit(lambda: _outbox_send_committed(written))


def _mark_relayed(row_ids: list[int]) -> None:
    # Asynchronous commit: losing a mark in a crash only means one harmless duplicate send.
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL synchronous_commit TO OFF")
    Outbox.objects.filter(pk__in=row_ids).update(relayed_at=timezone.now())


def _outbox_send_committed(rows: list[Outbox]) -> None:
    """The fast path right after commit: send the rows this transaction wrote, then mark them relayed.
    No row lock is needed: the sweeper only relays rows older than AIOS_OUTBOX_RELAY_AFTER_SECONDS, and a
    rare double send is a no-op for the claiming task."""
    # The gap the outbox exists for: committed, nothing sent yet. A crash here leaves the rows for the sweeper.
    crash_point("after_result_commit_before_dispatch")
    sent = []
    for row in rows:
        try:
            current_app.send_task(row.task, args=row.args, queue=row.queue)
        except Exception:  # the broker is down: the sweeper relays what is left
            logger.warning("could not send outbox row %s; the sweeper will", row.pk, exc_info=True)
            break
        sent.append(row.pk)
    if sent:
        if connection.in_atomic_block:
            _mark_relayed(sent)
        else:
            # One round trip instead of four (BEGIN, SET LOCAL, UPDATE, COMMIT): this runs after every commit
            # that dispatched anything. The ids are integers from our own rows, so writing them in is safe, and
            # no parameters keep the simple protocol, which allows the four statements in one message.
            ids = ",".join(str(int(row_id)) for row_id in sent)
            with connection.cursor() as cursor:
                try:
                    cursor.execute(
                        "BEGIN; SET LOCAL synchronous_commit TO OFF; "
                        f"UPDATE runs_outbox SET relayed_at = now() WHERE id IN ({ids}); COMMIT"
                    )
                except DatabaseError:
                    # Django did not open that transaction, so it would not end it: leave no aborted one behind.
                    # The rows stay unmarked; the sweeper's resend is a harmless duplicate.
                    with contextlib.suppress(DatabaseError):
                        cursor.execute("ROLLBACK")
                    logger.warning("could not mark outbox rows %s relayed", ids, exc_info=True)
    crash_point("after_dispatch")


def outbox_relay(*, older_than_seconds: float = 0, limit: int = 500) -> int:
    """The sweeper's relay: send unrelayed rows older than `older_than_seconds` and mark them relayed;
    returns how many were sent.

    Rows are locked with SKIP LOCKED so two sweeps never send the same row at once. A row whose send fails
    stays unrelayed for the next sweep.
    """
    with transaction.atomic():
        rows = Outbox.objects.select_for_update(skip_locked=True).filter(relayed_at__isnull=True)
        if older_than_seconds:
            rows = rows.filter(created_at__lt=timezone.now() - timedelta(seconds=older_than_seconds))
        done = []
        for row in rows.order_by("pk")[:limit]:
            try:
                current_app.send_task(row.task, args=row.args, queue=row.queue)
            except Exception:  # the broker is down: leave the row for the sweeper
                Outbox.objects.filter(pk=row.pk).update(attempts=F("attempts") + 1)
                break
            done.append(row.pk)
        if done:
            _mark_relayed(done)
    return len(done)
