"""What reviewers' decisions say about a workflow, for its analyst: how often each field was right at each
confidence, how often reviewers changed it, and the evaluation set to download."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from apps.approvals.corrections import workflow_calibration, workflow_for_export
from apps.approvals.models import ApprovalDecision


@login_required
def workflow_accuracy(request: HttpRequest, slug: str) -> HttpResponse:
    """The workflow page's "Review accuracy" section (loaded after the page): calibration per field and
    score band, override rate per field, and the corrections export. Empty for a workflow nobody reviewed."""
    workflow = workflow_for_export(request.user, slug=slug)
    decisions = ApprovalDecision.objects.filter(request__run__workflow=workflow)
    totals = decisions.aggregate(
        n=Count("pk"),
        approved=Count("pk", filter=Q(decision="approved")),
        changed=Count("pk", filter=Q(decision="approved") & ~Q(changes=[])),
        sampled=Count("pk", filter=Q(request__audit_sample=True)),
    )
    calibration = workflow_calibration(workflow) if totals["n"] else []
    by_field: dict[str, list] = {}
    for row in calibration:
        by_field.setdefault(row.field, []).append(row)
    context = {"workflow": workflow, "totals": totals, "by_field": sorted(by_field.items())}
    return render(request, "approvals/_workflow_accuracy.html", context)
