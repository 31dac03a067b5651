"""Celery tasks for the audit trail: thin doors into the anchor and checkpoint services, both safe to repeat."""

from __future__ import annotations

from celery import shared_task

from apps.audit.services import audit_anchor_write, audit_checkpoint_write
from apps.audit.verification import VERIFY_TASK, audit_verification_run

ANCHOR_TASK = "audit.anchor_write"
CHECKPOINT_TASK = "audit.checkpoint_write"


@shared_task(name=ANCHOR_TASK, acks_late=False, ignore_result=True)
def anchor_write() -> int | None:
    """Anchor the stream heads that changed since the last anchor; returns the new anchor's seq, if any."""
    anchor = audit_anchor_write()
    return anchor.seq if anchor else None


@shared_task(name=CHECKPOINT_TASK, acks_late=False, ignore_result=True)
def checkpoint_write() -> str | None:
    """Sign the newest anchor into a checkpoint file outside the database; returns its path, if one was written."""
    path = audit_checkpoint_write()
    return str(path) if path else None


@shared_task(name=VERIFY_TASK, ignore_result=True)
def verify(verification_id: int) -> None:
    """Run a "Verify now" request (claims it first; a second delivery finds it taken and returns)."""
    audit_verification_run(verification_id=verification_id)
