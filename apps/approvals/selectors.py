"""Permission-aware reads of approval requests: a user sees the requests of runs they may see."""

from __future__ import annotations

from django.contrib.auth.models import AbstractUser, AnonymousUser
from django.db.models import QuerySet
from django.http import Http404

from apps.approvals.models import ApprovalRequest
from apps.runs.selectors import run_list_for_user


def approval_list_for_user(user: AbstractUser | AnonymousUser) -> QuerySet[ApprovalRequest]:
    """Requests on runs `user` may view, oldest first."""
    return (
        ApprovalRequest.objects.filter(run__in=run_list_for_user(user).values("pk"))
        .select_related("run", "run__workflow", "decided_by", "step_run")
        .order_by("created_at")
    )


def approval_get_for_user(user: AbstractUser | AnonymousUser, *, request_id: int) -> ApprovalRequest:
    request = approval_list_for_user(user).filter(pk=request_id).first()
    if request is None:
        raise Http404("No such approval request.")
    return request
