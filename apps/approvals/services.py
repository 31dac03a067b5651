"""Opening, deciding and expiring approval requests."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from apps.accounts.models import User
from apps.accounts.roles import ADMIN
from apps.approvals.models import ApprovalRequest
from apps.audit.services import audit_record
from apps.core.exceptions import Conflict, Forbidden, ValidationFailed
from apps.runs.lifecycle import output_digest, run_lock, step_run_resume
from apps.runs.models import StepRun
from apps.steps.base import Wait
from apps.steps.library.human import ApprovalConfig

DECISIONS = (ApprovalRequest.State.APPROVED, ApprovalRequest.State.REJECTED)


def approval_request_open(step_run: StepRun, wait: Wait) -> None:
    """The engine's hook for a parked `human.approval` step (runs in the parking transaction)."""
    config = ApprovalConfig.model_validate(step_run.run.step_definition(step_run.step_key).get("config", {}))
    request = ApprovalRequest.objects.create(
        step_run=step_run,
        run=step_run.run,
        queue=config.queue,
        title=config.title,
        payload=wait.payload.get("params", {}),
        separation_of_duties=config.separation_of_duties,
        due_at=wait.fire_at,
    )
    audit_record(actor=None, verb="approval.requested", target=request, data={"queue": config.queue})


def approval_may_decide(user: User, request: ApprovalRequest) -> str | None:
    """None when `user` may decide `request`, else the reason they may not."""
    if not user.is_authenticated or not user.is_active:
        return "Only a signed-in person can decide."
    is_admin = user.groups.filter(name=ADMIN).exists() or user.is_superuser
    if not is_admin and not user.groups.filter(name=request.queue).exists():
        return f'Only members of "{request.queue}" can decide this request.'
    if request.separation_of_duties and request.run.initiator_id == user.pk:
        return "You started this run, so someone else must decide (separation of duties)."
    return None


@transaction.atomic
def approval_decide(
    *, request: ApprovalRequest, actor: User, decision: str, reason: str = "", edits: dict[str, Any] | None = None
) -> ApprovalRequest:
    """Record a person's decision once and resume the run. A second decision is refused with 409."""
    if decision not in DECISIONS:
        raise ValidationFailed("Unknown decision.", fields={"decision": ["Use approved or rejected."]})
    if decision == ApprovalRequest.State.REJECTED and not reason.strip():
        raise ValidationFailed("A rejection needs a reason.", fields={"reason": ["Say why."]})
    if edits is not None and not isinstance(edits, dict):
        raise ValidationFailed("Edits must be an object.", fields={"edits": ["Must be a JSON object."]})
    refusal = approval_may_decide(actor, request)
    if refusal:
        raise Forbidden(refusal)
    # The run first, then its approval row (the lock-order rule in apps/runs/lifecycle.py): a decision racing
    # the due timer, which holds the run while it expires the request, waits here instead of deadlocking.
    run_lock(request.run_id)
    now = timezone.now()
    won = ApprovalRequest.objects.filter(pk=request.pk, state=ApprovalRequest.State.PENDING).update(
        state=decision, decided_by=actor, decided_at=now, reason=reason[:5000], edits=edits or {}
    )
    if not won:
        current = ApprovalRequest.objects.get(pk=request.pk)
        audit_record(actor=actor, verb="approval.decision_refused", target=current, data={"attempted": decision})
        raise Conflict(f"This request was already {current.state}.")
    request.refresh_from_db()
    audit_record(
        actor=actor,
        verb=f"approval.{decision}",
        target=request,
        data={"reason": reason[:500], "edited": bool(edits), "edits_sha256": output_digest(edits or {})},
    )
    step_run_resume(
        step_run=request.step_run,
        output={
            "decision": decision,
            "branch": decision,
            "reason": reason,
            "edits": edits or {},
            "decided_by": actor.get_username(),
        },
        actor=actor,
    )
    return request


def approval_request_expire(step_run: StepRun) -> None:
    """The engine's hook for an approval whose due time passed (runs in the timer's transaction)."""
    request = ApprovalRequest.objects.filter(step_run=step_run, state=ApprovalRequest.State.PENDING).first()
    if request is None:
        return
    if not ApprovalRequest.objects.filter(pk=request.pk, state=ApprovalRequest.State.PENDING).update(
        state=ApprovalRequest.State.EXPIRED, decided_at=timezone.now()
    ):
        return
    audit_record(actor=None, verb="approval.expired", target=request)
    step_run_resume(
        step_run=step_run,
        output={"decision": "expired", "branch": "expired", "reason": "", "edits": {}, "decided_by": ""},
    )
