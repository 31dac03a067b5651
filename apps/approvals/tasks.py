"""Celery tasks of the approvals app: thin doors into its services, safe to run twice."""

from __future__ import annotations

from celery import shared_task

from apps.approvals.notifications import digests_send
from apps.approvals.services import absences_hand_over, escalations_fire

ESCALATIONS_TASK = "approvals.escalations_fire"
DIGEST_TASK = "approvals.digests_send"


@shared_task(name=ESCALATIONS_TASK, acks_late=False, ignore_result=True)
def fire_escalations() -> int:
    """Fire every escalation step that is due, each exactly once (the timer row is the claim), and hand the
    items of people who are away today to their delegates."""
    fired = escalations_fire()
    absences_hand_over()
    return fired


@shared_task(name=DIGEST_TASK, acks_late=False, ignore_result=True)
def send_digests() -> int:
    """Mail each person the notifications not yet mailed; returns how many mails went out."""
    return digests_send()
