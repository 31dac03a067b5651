"""Who may do what with approval queues and items: the rules every service, selector and view asks. Reads
only; no writes, so services and selectors can both use it."""

from __future__ import annotations

from apps.accounts.models import User
from apps.accounts.roles import ADMIN, REVIEWER, user_roles
from apps.approvals.models import ApprovalQueue, ApprovalRequest
from apps.runs.models import Incident, Run, StepRun

WORK = "approvals.work_approvalqueue"
USE = "approvals.use_approvalqueue"
MANAGE = "approvals.manage_approvalqueue"


def _has_role(user: User, *roles: str) -> bool:
    return user.is_superuser or bool(user_roles(user) & set(roles))


def user_works_queue(user: User, queue: ApprovalQueue) -> bool:
    """Whether `user` may work `queue`'s items: the reviewer or admin role, and the queue's work permission
    (granted to them or to a group they are in, e.g. the queue's team)."""
    if not user.is_authenticated or not user.is_active:
        return False
    if user.is_superuser or _has_role(user, ADMIN):
        return True
    return _has_role(user, REVIEWER) and user.has_perm(WORK, queue)


def user_manages_queue(user: User, queue: ApprovalQueue) -> bool:
    """Whether `user` may change `queue` and move its items between people: its lead, admins, and holders of
    the queue's manage permission."""
    if not user.is_authenticated or not user.is_active:
        return False
    return bool(user.is_superuser or _has_role(user, ADMIN) or queue.lead_id == user.pk or user.has_perm(MANAGE, queue))


def run_initiator_ids(run: Run) -> set[int]:
    """Everyone who started this run or a run it descends from, or supplied a step's output in it: a restart
    or replay is started by someone else, but the person who started the original still may not approve its
    outcome, and whoever skipped a failed step with an output of her own made data the approval judges."""
    ids: set[int] = set()
    seen: set[int] = set()
    current: Run | None = run
    while current is not None and current.pk not in seen:
        seen.add(current.pk)
        if current.initiator_id:
            ids.add(current.initiator_id)
        ids.update(
            Incident.objects.filter(
                run=current, resolution=Incident.Resolution.SKIP, resolved_by__isnull=False
            ).values_list("resolved_by_id", flat=True)
        )
        parent_id = current.restarted_from_id or current.replay_of_id
        if parent_id is None and current.parent_step_run_id:
            parent_id = StepRun.objects.filter(pk=current.parent_step_run_id).values_list("run_id", flat=True).first()
        current = Run.objects.filter(pk=parent_id).first() if parent_id else None
    return ids


def approval_refusal(user: User, request: ApprovalRequest) -> str | None:
    """None when `user` may decide `request` now (leaving aside claims and policy), else why not."""
    if not user.is_authenticated or not user.is_active:
        return "Only a signed-in person can decide."
    if not user_works_queue(user, request.queue):
        return f'Only reviewers of the "{request.queue.name}" queue can decide this item.'
    if request.separation_of_duties and user.pk in request.initiators:
        return "You started this run, so someone else must decide (separation of duties)."
    return None
