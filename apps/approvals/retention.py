"""What the retention purge removes of the approvals app (registered in apps.py; apps/runs/retention.py).

An approval request and its decisions are part of the run's record: what a person was shown and what they
decided about that run. They go with the run, as do the request's activities, escalation timers and
notifications. Decisions are append-only, so removing them needs the owner role, like the purge itself. The
audit trail keeps its `approval.*` events: who decided what, and when, stays on the record.
"""

from __future__ import annotations

from apps.approvals.models import ApprovalActivity, ApprovalDecision, ApprovalRequest, EscalationTimer, Notification
from apps.core.db import append_only_purge


def approvals_count_for_runs(run_ids: list[int]) -> dict[str, int]:
    """{kind: rows} the purge of `run_ids` would remove."""
    requests = ApprovalRequest.objects.filter(run_id__in=run_ids)
    return {
        "approval notifications": Notification.objects.filter(request__in=requests).count(),
        "approval escalation timers": EscalationTimer.objects.filter(request__in=requests).count(),
        "approval activities": ApprovalActivity.objects.filter(request__in=requests).count(),
        "approval decisions": ApprovalDecision.objects.filter(request__in=requests).count(),
        "approval requests": requests.count(),
    }


def approvals_remove_for_runs(run_ids: list[int]) -> dict[str, int]:
    """Delete the approval rows of `run_ids`, children first, in the purge's transaction."""
    request_ids = list(ApprovalRequest.objects.filter(run_id__in=run_ids).values_list("pk", flat=True))
    if not request_ids:
        return {}
    removed = {}
    for kind, model in (
        ("approval notifications", Notification),
        ("approval escalation timers", EscalationTimer),
        ("approval activities", ApprovalActivity),
    ):
        queryset = model.objects.filter(request_id__in=request_ids)
        removed[kind] = int(queryset._raw_delete(queryset.db))
    removed["approval decisions"] = append_only_purge(ApprovalDecision.objects.filter(request_id__in=request_ids))
    requests = ApprovalRequest.objects.filter(pk__in=request_ids)
    removed["approval requests"] = int(requests._raw_delete(requests.db))
    return removed
