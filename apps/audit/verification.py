"""Writes of "Verify now": queueing a verification of the whole trail and running it on a worker.

Apart from apps.audit.services because running one reads through the selectors, which build on the services.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import current_app
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, models, transaction
from django.utils import timezone

from apps.audit.models import AuditVerification
from apps.audit.selectors import audit_verify
from apps.audit.services import audit_record

VERIFY_TASK = "audit.verify"
_REQUEST_LOCK_KEY = 0x41494F5356455249  # "AIOSVERI", beside the anchor writer's single-bigint advisory key

# A verification that has been "running" this long lost its worker (killed mid-way): another may take it over.
VERIFICATION_STALE_SECONDS = 1800


@transaction.atomic
def audit_verification_request(*, actor: AbstractBaseUser) -> tuple[AuditVerification, bool]:
    """Queue a verification of the whole trail for a worker; returns it and whether it is new.

    While one is still queued or running, asking again returns that one instead of queueing another: the
    check reads the whole trail, and a few impatient clicks must not make the workers read it five times.
    The advisory lock makes two simultaneous requests agree on that.
    """
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_REQUEST_LOCK_KEY])
    pending = AuditVerification.objects.filter(
        state__in=[AuditVerification.State.QUEUED, AuditVerification.State.RUNNING]
    ).first()
    if pending is not None:
        return pending, False
    verification = AuditVerification.objects.create(
        requested_by_id=actor.pk,
        requested_by_label=actor.get_username(),
        requested_at=timezone.now(),
    )
    audit_record(actor=actor, verb="audit.verification_requested", target=verification)
    # By name: the task module imports this one.
    transaction.on_commit(
        lambda: current_app.send_task(VERIFY_TASK, args=[verification.pk]),
    )
    return verification, True


def audit_verification_run(*, verification_id: int) -> AuditVerification | None:
    """Run one queued verification and store its outcome with an `audit.verified` event; safe to call twice.

    The claim is a conditional UPDATE: only one caller moves the row from queued (or from a running state
    whose worker died) to running; the others get None and return.
    """
    now = timezone.now()
    claimed = (
        AuditVerification.objects.filter(pk=verification_id)
        .filter(
            models.Q(state=AuditVerification.State.QUEUED)
            | models.Q(
                state=AuditVerification.State.RUNNING,
                started_at__lt=now - timedelta(seconds=VERIFICATION_STALE_SECONDS),
            )
        )
        .update(state=AuditVerification.State.RUNNING, started_at=now)
    )
    if not claimed:
        return None
    verification = AuditVerification.objects.get(pk=verification_id)
    outcome: dict[str, Any]
    try:
        report = audit_verify()
    except Exception as error:  # the page must show why, whatever went wrong
        outcome = {"state": AuditVerification.State.FAILED, "error": f"{type(error).__name__}: {error}"[:2000]}
    else:
        outcome = {
            "state": AuditVerification.State.DONE,
            "intact": report.intact,
            "events_checked": report.events_checked,
            "streams_checked": report.streams_checked,
            "anchors_checked": report.anchors_checked,
            "legacy_events": report.legacy_events,
            "problems": [{"where": problem.where, "reason": problem.reason} for problem in report.problems],
            "warnings": list(report.warnings),
            "checkpoint": report.checkpoint,
        }
    with transaction.atomic():
        for name, value in outcome.items():
            setattr(verification, name, value)
        verification.finished_at = timezone.now()
        verification.save()
        actor = (
            get_user_model().objects.filter(pk=verification.requested_by_id).first()
            if verification.requested_by_id
            else None
        )
        audit_record(
            actor=actor,
            verb="audit.verified",
            target=verification,
            data={
                "state": verification.state,
                "intact": verification.intact,
                "events_checked": verification.events_checked,
                "anchors_checked": verification.anchors_checked,
                "problems": len(verification.problems),
                "first_problem": str(verification.problems[0]["where"]) if verification.problems else None,
                "error": verification.error or None,
                "seconds": verification.seconds,
            },
        )
    return verification
