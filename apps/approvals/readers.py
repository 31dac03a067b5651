"""The approvals app's readers for the step library's `assistant.lookup` (apps/steps/readers.py): a person's
items to decide and her week's numbers, read with her own rights through this app's selectors. Registered in
`ApprovalsConfig.ready()`."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db.models import Count, Q
from django.urls import reverse
from django.utils import timezone

from apps.accounts.models import User
from apps.approvals.calendar import duration_text, sla_state
from apps.approvals.models import ApprovalDecision, ApprovalRequest
from apps.approvals.selectors import DUE_SOON, _view_queryset
from apps.runs.models import Run
from apps.runs.selectors import run_list_for_user
from apps.steps.readers import Reading

WEEK = timedelta(days=7)


def reader_user(user_id: int) -> User | None:
    """The person a reader reads for: an active account, else nobody (a departed colleague's run reads nothing)."""
    return User.objects.filter(pk=user_id, is_active=True).first()


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def my_approvals(user_id: int, params: dict[str, Any]) -> Reading:
    """The items she may decide now, oldest first: claimed by her, or unclaimed in a queue she works (not those
    she may not decide under separation of duties, nor those she already approved under a several-people
    policy): the inbox's "My items" and "Unclaimed in my queues" together."""
    user = reader_user(user_id)
    if user is None:
        return {"items": [], "summary": "There is no active account to look approvals up for."}
    now = timezone.now()
    mine = _view_queryset(user, "mine", now).values("pk")
    unclaimed = _view_queryset(user, "unclaimed", now).values("pk")
    pending = ApprovalRequest.objects.filter(Q(pk__in=mine) | Q(pk__in=unclaimed))
    counts = pending.order_by().aggregate(
        total=Count("pk"),
        claimed=Count("pk", filter=Q(assignee_id=user.pk)),
        breached=Count("pk", filter=Q(due_at__lt=now)),
    )
    total, claimed, breached = counts["total"], counts["claimed"], counts["breached"]
    rows = pending.select_related("queue", "run__workflow").order_by("created_at", "pk")[: int(params["limit"])]
    items = []
    for request in rows:
        sla = sla_state(now, request.due_at, due_soon_within=DUE_SOON)
        items.append(
            {
                "request_id": request.pk,
                "title": request.title,
                "queue": request.queue.name,
                "workflow": request.run.workflow.name,
                "priority": request.get_priority_display(),
                "claimed_by_me": request.assignee_id == user.pk,
                "age": f"waiting {duration_text(now - request.created_at)}",
                "created_at": request.created_at.isoformat(),
                "due_at": request.due_at.isoformat() if request.due_at else None,
                "sla": sla.text,
                "sla_state": sla.kind,
                "link": reverse("approvals:item", args=[request.pk]),
            }
        )
    if not total:
        return {"items": [], "summary": "Nothing is waiting for you to decide."}
    summary = (
        f"{_plural(total, 'item is', 'items are')} waiting for you to decide"
        f"{f' ({claimed} claimed by you)' if claimed else ''}; the oldest has been {items[0]['age']}"
    )
    if breached:
        summary += f", and {breached} {'is past its' if breached == 1 else 'are past their'} due time"
    if total > len(items):
        summary += " (the oldest is listed)" if len(items) == 1 else f" (the {len(items)} oldest are listed)"
    return {"items": items, "summary": summary + "."}


def weekly_summary(user_id: int, params: dict[str, Any]) -> Reading:
    """Her numbers of the last 7 days: items she decided (approved, rejected), and the live runs she started
    (succeeded, failed, still going), leaving out the asking workflow's own runs (talking to an assistant is not
    work to count)."""
    user = reader_user(user_id)
    if user is None:
        return {"items": [], "summary": "There is no active account to sum up a week for."}
    since = timezone.now() - WEEK
    decisions = ApprovalDecision.objects.filter(actor=user, created_at__gte=since).aggregate(
        decided=Count("pk"),
        approved=Count("pk", filter=Q(decision="approved")),
        rejected=Count("pk", filter=Q(decision="rejected")),
    )
    runs = run_list_for_user(user).filter(initiator=user, created_at__gte=since, mode=Run.Mode.LIVE)
    if params.get("workflow_id"):
        runs = runs.exclude(workflow_id=params["workflow_id"])
    started = runs.order_by().aggregate(
        started=Count("pk"),
        succeeded=Count("pk", filter=Q(status=Run.Status.SUCCEEDED)),
        failed=Count("pk", filter=Q(status=Run.Status.FAILED)),
        going=Count("pk", filter=Q(status__in=[Run.Status.PENDING, Run.Status.RUNNING])),
    )
    numbers = [
        ("items_decided", "Items decided", decisions["decided"]),
        ("items_approved", "Items approved", decisions["approved"]),
        ("items_rejected", "Items rejected", decisions["rejected"]),
        ("runs_started", "Runs started", started["started"]),
        ("runs_succeeded", "Runs succeeded", started["succeeded"]),
        ("runs_failed", "Runs failed", started["failed"]),
        ("runs_in_progress", "Runs still in progress", started["going"]),
    ]
    items = [{"key": key, "name": label, "value": value} for key, label, value in numbers]
    summary = (
        f"In the last 7 days you decided {_plural(decisions['decided'], 'item', 'items')} "
        f"({decisions['approved']} approved, {decisions['rejected']} rejected) and started "
        f"{_plural(started['started'], 'run', 'runs')} ({started['succeeded']} succeeded, {started['failed']} "
        f"failed, {started['going']} still in progress)."
    )
    return {"items": items, "summary": summary}
