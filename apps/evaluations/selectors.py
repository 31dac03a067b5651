"""Reads of evaluation suites and reports, through the workflow's permissions: whoever may view a workflow reads
its suite and reports; whoever may change it edits the suite and runs it; others get 404."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from django.contrib.auth.models import AbstractUser, AnonymousUser
from django.db.models import Count, Exists, OuterRef, Q, QuerySet
from django.http import Http404
from django.utils import timezone

from apps.evaluations.models import (
    EvaluationCase,
    EvaluationGateOverride,
    EvaluationGatePass,
    EvaluationReport,
    EvaluationResult,
    EvaluationSuite,
)
from apps.evaluations.outputs import OutputField, reader_for
from apps.inference.models import InferenceCall
from apps.workflows.graph import graph_checksum
from apps.workflows.models import Workflow, WorkflowVersion
from apps.workflows.selectors import (
    workflow_draft_for,
    workflow_get_for_user,
    workflow_list_for_user,
    workflow_version_published_latest,
)

AnyUser = AbstractUser | AnonymousUser


def suite_for(workflow: Workflow) -> EvaluationSuite | None:
    """The workflow's suite, if it has one."""
    return EvaluationSuite.objects.filter(workflow=workflow).first()


def suite_graph(workflow: Workflow) -> dict[str, Any]:
    """The graph the suite's fields are read from: the draft's, else the newest published version's."""
    version = workflow_draft_for(workflow) or workflow_version_published_latest(workflow)
    return version.graph if version is not None and isinstance(version.graph, dict) else {"steps": []}


def suite_fields(suite: EvaluationSuite, graph: dict[str, Any] | None = None) -> list[OutputField] | None:
    """The checked output's fields (None: any name, the step declares none; [] when the step is gone)."""
    found = reader_for(graph if graph is not None else suite_graph(suite.workflow), suite.step_key)
    if found is None:
        return []
    reader, step = found
    return reader.fields(step)


def suite_cases(suite: EvaluationSuite) -> QuerySet[EvaluationCase]:
    return suite.cases.select_related("created_by").order_by("name", "pk")


def suite_checksum(suite: EvaluationSuite) -> str:
    """A digest of the criteria and every case's inputs and expected output: what a report proves things about."""
    content = {
        "step": suite.step_key,
        "criteria": suite_criteria(suite),
        "cases": sorted(
            [name, inputs, expected] for name, inputs, expected in suite.cases.values_list("name", "inputs", "expected")
        ),
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def suite_criteria(suite: EvaluationSuite) -> dict[str, Any]:
    """The pass criteria as plain values (what a report keeps of them)."""
    return {
        "min_accuracy": str(suite.min_accuracy),
        "field_min_accuracy": {name: str(value) for name, value in sorted((suite.field_min_accuracy or {}).items())},
        "require_schema_valid": suite.require_schema_valid,
        "max_cost_per_case": None if suite.max_cost_per_case is None else str(suite.max_cost_per_case),
        "max_latency_p95_seconds": None
        if suite.max_latency_p95_seconds is None
        else str(suite.max_latency_p95_seconds),
    }


def content_checksum(version: WorkflowVersion) -> str:
    """The checksum of a draft's content as the gate compares it (graph and input schema)."""
    # The draft's graph as saved, not as published: publishing pins each sub-workflow step without a version to
    # the child's newest published version (apps.workflows.validation.sub_workflows_pinned), so a version's own
    # checksum can differ from this one, and a child published after the report is not re-evaluated. That is
    # sound because an evaluation run never runs a child: sub-workflow steps are simulated in test runs
    # (apps.runs.executor test_stands_in), so the report says nothing about any child version either way. The
    # case runs compare their own snapshot against this checksum (services.evaluation_result_run_start), which
    # is why it stays on the unpinned graph.
    return graph_checksum(version.graph, version.input_schema)


def report_list(workflow: Workflow) -> QuerySet[EvaluationReport]:
    """The workflow's reports, newest first, with who started them."""
    return EvaluationReport.objects.filter(workflow=workflow).select_related("started_by", "published_version")


def report_newest_for_content(suite: EvaluationSuite, checksum: str) -> EvaluationReport | None:
    """The newest report of `suite` on exactly this content (finished or not)."""
    return (
        EvaluationReport.objects.filter(suite=suite, content_checksum=checksum).order_by("-created_at", "-pk").first()
    )


def report_passing_for(suite: EvaluationSuite, version: WorkflowVersion) -> EvaluationReport | None:
    """The report that lets `version` through the gate: the newest finished report on exactly its content, with
    the suite as it is now, when it passed."""
    newest = (
        EvaluationReport.objects.filter(
            suite=suite,
            content_checksum=content_checksum(version),
            suite_checksum=suite_checksum(suite),
            state__in=EvaluationReport.FINISHED,
        )
        .order_by("-created_at", "-pk")
        .first()
    )
    return newest if newest is not None and newest.state == EvaluationReport.State.PASSED else None


def suite_baseline(suite: EvaluationSuite) -> tuple[list[int], str]:
    """The suite's established cases (ids of cases it still has, oldest first) and where they come from, in
    words; ([], "") when it has none.

    The rule: accuracy, per-field accuracy and the 95th percentile of time are pooled over cases, so cases that
    are easy to pass, added in numbers, would lift a bad draft over the bar. A report is therefore also scored
    over the cases an admin, or the gate itself, already stood behind: the cases of the report that let the
    published version through; or, when that version went out through an admin's override (or before the
    suite), the cases that existed when an admin last saved the suite's settings. Cases added since can make a
    report fail, never make it pass."""
    published = workflow_version_published_latest(suite.workflow)
    gate_pass = (
        EvaluationGatePass.objects.filter(version=published, report__suite=suite).select_related("report").first()
        if published is not None
        else None
    )
    current = suite.cases.order_by("created_at", "pk")
    if gate_pass is not None and published is not None:
        ids = current.filter(
            pk__in=EvaluationResult.objects.filter(report_id=gate_pass.report_id, case__isnull=False).values("case_id")
        ).values_list("pk", flat=True)
        words = f"the cases of report {gate_pass.report_id}, which let version {published.number} through"
    elif suite.admin_reviewed_at is not None:
        ids = current.filter(created_at__lte=suite.admin_reviewed_at).values_list("pk", flat=True)
        when = timezone.localtime(suite.admin_reviewed_at)
        words = f"the cases the suite had when an admin last saved its settings ({when:%Y-%m-%d %H:%M})"
    else:
        return [], ""
    found = list(ids)
    return (found, words) if found else ([], "")


def report_get_for_user(user: AnyUser, *, slug: str, pk: int) -> EvaluationReport:
    """One report of a workflow `user` may view; 404 otherwise (existence is not revealed)."""
    workflow = workflow_get_for_user(user, slug=slug)
    report = report_list(workflow).filter(pk=pk).first()
    if report is None:
        raise Http404("No such report.")
    return report


def report_results(report: EvaluationReport) -> QuerySet[EvaluationResult]:
    return report.results.select_related("run").order_by("case_name", "pk")


def report_progress(report: EvaluationReport) -> dict[str, int]:
    """How many of the report's case runs have finished, of how many."""
    counts = report.results.aggregate(
        total=Count("pk"),
        # A case whose run could not start is done too (it failed); one not started yet is not.
        finished=Count("pk", filter=Q(run__status__in=["succeeded", "failed", "cancelled"]) | ~Q(start_error="")),
    )
    return {"total": counts["total"] or 0, "finished": counts["finished"] or 0}


def report_summary(report: EvaluationReport) -> dict[str, Any]:
    """The report in a few plain values (what a refused publish answers with)."""
    return {
        "report": report.pk,
        "state": report.state,
        "version": report.version_number,
        "cases": report.totals.get("cases"),
        "cases_passed": report.totals.get("cases_passed"),
        "accuracy": report.totals.get("accuracy"),
        "failed_criteria": [outcome["label"] for outcome in report.outcomes if not outcome.get("passed")],
    }


def reports_compared(workflow: Workflow, *, limit: int = 12) -> dict[str, Any]:
    """The newest finished reports side by side (oldest first, left to right): per-field accuracy, pass rate,
    cost and latency, with the field names every one of them checked."""
    reports = list(report_list(workflow).filter(state__in=EvaluationReport.FINISHED)[:limit])[::-1]
    names = sorted({name for report in reports for name in (report.totals.get("field_accuracy") or {})})
    return {
        "reports": reports,
        "fields": [
            {"name": name, "values": [(report.totals.get("field_accuracy") or {}).get(name) for report in reports]}
            for name in names
        ],
    }


def evaluation_reports_for_endpoint(user: AnyUser, endpoint_name: str) -> QuerySet[EvaluationReport]:
    """Finished reports, of workflows `user` may view, whose checked step called the model endpoint named
    `endpoint_name` in at least one case (for a report on the run's output: any step of a case's run), newest
    first: a model card's evaluation results."""
    used = InferenceCall.objects.filter(endpoint_name=endpoint_name, run_id=OuterRef("run_id"))
    checked = used.filter(step_key=OuterRef("report__step_key"))
    results = EvaluationResult.objects.filter(Q(Exists(checked)) | (Q(report__step_key="") & Q(Exists(used))))
    return (
        EvaluationReport.objects.filter(
            pk__in=results.values("report_id"),
            workflow__in=workflow_list_for_user(user).values("pk"),
            state__in=EvaluationReport.FINISHED,
        )
        .select_related("workflow", "started_by")
        .order_by("-created_at", "-pk")
    )


def version_evidence(workflow: Workflow, suite: EvaluationSuite | None) -> list[dict[str, Any]]:
    """Each published version of the workflow, newest first, with what let it out: the passing report, an admin's
    override (who and why), or nothing (published before the suite existed, or while its gate was off)."""
    versions = list(
        workflow.versions.filter(state=WorkflowVersion.State.PUBLISHED)
        .select_related("published_by")
        .order_by("-number")
    )
    ids = [version.pk for version in versions]
    passes = {row.version_id: row for row in EvaluationGatePass.objects.filter(version_id__in=ids)}
    overrides = {
        row.version_id: row
        for row in EvaluationGateOverride.objects.filter(version_id__in=ids).select_related("actor", "report")
    }
    rows = []
    for version in versions:
        row: dict[str, Any] = {"version": version, "kind": "none", "report_id": None}
        if version.pk in passes:
            row.update(kind="passed", report_id=passes[version.pk].report_id)
        elif version.pk in overrides:
            override = overrides[version.pk]
            row.update(kind="overridden", report_id=override.report_id, override=override)
        elif suite is None or (version.published_at and version.published_at < suite.created_at):
            row["kind"] = "before"
        rows.append(row)
    return rows
