"""Pages of a workflow's evaluation suite: the suite (criteria, cases, reports), a case's form, a report (live while
its case runs go, then per case), reports compared across versions, and publishing through the suite.

Whoever may view the workflow reads all of it; whoever may change it edits the suite, runs it and publishes;
others get 404. Admins may publish a draft over a failing suite with a reason.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRefresh

from apps.accounts.models import User
from apps.accounts.selectors import user_roles
from apps.core.exceptions import ApplicationError, Forbidden, ValidationFailed
from apps.core.htmx import HtmxHttpRequest
from apps.evaluations.forms import (
    EXPECTED_JSON,
    expected_from_post,
    expected_rows,
    input_form,
    inputs_from_post,
)
from apps.evaluations.models import EvaluationCase, EvaluationReport, EvaluationSuite
from apps.evaluations.outputs import checkable_steps, reader_for
from apps.evaluations.selectors import (
    content_checksum,
    report_get_for_user,
    report_list,
    report_passing_for,
    report_progress,
    report_results,
    reports_compared,
    suite_cases,
    suite_fields,
    suite_for,
    suite_graph,
    version_evidence,
)
from apps.evaluations.services import (
    SuiteLoosening,
    evaluation_case_check,
    evaluation_case_delete,
    evaluation_case_from_run,
    evaluation_case_save,
    evaluation_cases_import_corrections,
    evaluation_publish,
    evaluation_report_start,
    evaluation_suite_save,
)
from apps.runs.selectors import run_get_for_user, run_list_for_user
from apps.workflows.models import Workflow
from apps.workflows.selectors import workflow_can_edit, workflow_draft_for, workflow_get_for_user
from apps.workflows.services import workflow_version_publish

REPORTS_SHOWN = 20
RECENT_RUNS = 10


def _user(request: HttpRequest) -> User:
    assert isinstance(request.user, User)
    return request.user


def _editable(request: HttpRequest, slug: str) -> Workflow:
    workflow = workflow_get_for_user(request.user, slug=slug)
    if not workflow_can_edit(request.user, workflow):
        raise PermissionDenied("You may read this evaluation suite but not change or run it.")
    return workflow


def _suite_or_404(workflow: Workflow) -> EvaluationSuite:
    suite = suite_for(workflow)
    if suite is None:
        raise Http404("This workflow has no evaluation suite.")
    return suite


def _step_label(graph: dict[str, Any], key: str) -> str:
    if not key:
        return "the run's output"
    step = next((s for s in graph.get("steps", []) if isinstance(s, dict) and s.get("key") == key), None)
    return f'step "{step.get("name") or key}" ({key})' if step else f'step "{key}" (not in the draft)'


@login_required
def suite_page(request: HttpRequest, slug: str) -> HttpResponse:
    """The suite: what it checks and its criteria, its cases, its reports, and the actions of those who may run it."""
    workflow = workflow_get_for_user(request.user, slug=slug)
    suite = suite_for(workflow)
    can_edit = workflow_can_edit(request.user, workflow)
    graph = suite_graph(workflow)
    draft = workflow_draft_for(workflow)
    context: dict[str, Any] = {
        "workflow": workflow,
        "suite": suite,
        "evidence": version_evidence(workflow, suite),
        "can_edit": can_edit,
        "draft": draft,
        "checkable": checkable_steps(graph),
    }
    if suite is not None:
        context.update(
            cases=suite_cases(suite),
            fields=suite_fields(suite, graph),
            step_label=_step_label(graph, suite.step_key),
            reports=report_list(workflow)[:REPORTS_SHOWN],
            passing=report_passing_for(suite, draft) if draft is not None else None,
            recent_runs=run_list_for_user(request.user)
            .filter(workflow=workflow, status="succeeded", mode="live")
            .order_by("-created_at")[:RECENT_RUNS]
            if can_edit
            else [],
        )
    return render(request, "evaluations/suite.html", context)


@login_required
@require_http_methods(["GET", "POST"])
def suite_settings(request: HttpRequest, slug: str) -> HttpResponse:
    """What the suite checks and its pass criteria (creates the suite on first save)."""
    workflow = _editable(request, slug)
    suite = suite_for(workflow)
    graph = suite_graph(workflow)
    errors: dict[str, list[str]] = {}
    refusal = ""
    values: dict[str, Any] = {
        "step_key": suite.step_key if suite else (checkable_steps(graph) or [{}])[0].get("key", ""),
        "min_accuracy": str(suite.min_accuracy) if suite else "90",
        "field_min_accuracy": dict(suite.field_min_accuracy) if suite else {},
        "require_schema_valid": suite.require_schema_valid if suite else True,
        "max_cost_per_case": "" if not suite or suite.max_cost_per_case is None else str(suite.max_cost_per_case),
        "max_latency_p95_seconds": ""
        if not suite or suite.max_latency_p95_seconds is None
        else str(suite.max_latency_p95_seconds),
        "enabled": suite.enabled if suite else True,
    }
    if request.method == "POST":
        post = request.POST
        values = {
            "step_key": post.get("step_key", ""),
            "min_accuracy": post.get("min_accuracy", ""),
            "field_min_accuracy": {
                key.removeprefix("field-"): str(post.get(key, "")).strip()
                for key in post
                if key.startswith("field-") and str(post.get(key, "")).strip()
            },
            "require_schema_valid": post.get("require_schema_valid") == "on",
            "max_cost_per_case": post.get("max_cost_per_case", ""),
            "max_latency_p95_seconds": post.get("max_latency_p95_seconds", ""),
            "enabled": post.get("enabled") == "on",
        }
        try:
            evaluation_suite_save(actor=_user(request), workflow=workflow, **values)
        except ValidationFailed as error:
            errors = error.fields
        except SuiteLoosening as error:
            # The form comes back as typed, saying who may make the change.
            refusal = error.message
        except Forbidden as error:
            raise PermissionDenied(error.message) from error
        else:
            messages.success(request, "Saved the suite's criteria.")
            return redirect("evaluations:suite", slug=slug)
    found = reader_for(graph, values["step_key"]) if values["step_key"] else None
    fields_of_step = (found[0].fields(found[1]) or []) if found else []
    return render(
        request,
        "evaluations/suite_settings.html",
        {
            "workflow": workflow,
            "suite": suite,
            "values": values,
            "errors": errors,
            "steps": checkable_steps(graph),
            "step_fields": [
                {"name": item.name, "value": values["field_min_accuracy"].get(item.name, "")} for item in fields_of_step
            ],
            "field_errors": {key.removeprefix("field_min_accuracy."): v for key, v in errors.items()},
            "refusal": refusal,
        },
        status=403 if refusal else 400 if errors else 200,
    )


@login_required
@require_http_methods(["GET", "POST"])
def case_edit(request: HttpRequest, slug: str, pk: int | None = None) -> HttpResponse:
    """Add a case (or change one): the run's inputs, and the expected value of each checked field."""
    workflow = _editable(request, slug)
    suite = _suite_or_404(workflow)
    case = None
    if pk is not None:
        case = suite.cases.filter(pk=pk).first()
        if case is None:
            raise Http404("No such case.")
    version = workflow_draft_for(workflow) or workflow.versions.order_by("-number").first()
    schema = version.input_schema if version is not None else {"type": "object", "properties": {}}
    fields = suite_fields(suite)
    name = case.name if case else ""
    errors: dict[str, list[str]] = {}
    general: list[str] = []
    status = 400
    expected_values: dict[str, Any] = dict(case.expected) if case else {}
    if request.method == "POST":
        name = request.POST.get("name", "")
        # The bound form shows its own errors; the service validates the same values with the same form class,
        # so the name, the inputs and the expected output are all judged in one pass.
        form = input_form(schema, data=request.POST)
        expected, errors = expected_from_post(fields, request.POST)
        inputs = inputs_from_post(form, request.POST)
        unreadable = bool(errors)
        try:
            if errors:
                # Values that could not even be read: judge the rest too, so everything is named in one pass.
                evaluation_case_check(suite, name=name, inputs=inputs, expected=expected)
                raise ValidationFailed("The case was not saved.", fields={})
            evaluation_case_save(
                actor=_user(request), suite=suite, case=case, name=name, inputs=inputs, expected=expected
            )
        except ValidationFailed as error:
            for key, found in error.fields.items():
                if key.startswith("inputs."):
                    if key.removeprefix("inputs.") not in form.fields:
                        general.extend(f"{key.removeprefix('inputs.')}: {message}" for message in found)
                elif key == "expected" and unreadable:
                    continue  # "expect at least one field" is not news when the fields typed could not be read
                elif key in ("name", "expected"):
                    errors.setdefault(key, found)
                else:
                    errors.setdefault(key.removeprefix("expected."), found)
        except ApplicationError as error:
            general.append(error.message)
            if isinstance(error, SuiteLoosening):
                status = 403
        else:
            messages.success(request, f'Saved the case "{name.strip()}".')
            return redirect("evaluations:suite", slug=slug)
        rows = expected_rows(fields or [], expected_values, errors, raw=request.POST)
    else:
        form = input_form(schema, initial=case.inputs if case else None)
        rows = expected_rows(fields or [], expected_values, errors)
    return render(
        request,
        "evaluations/case_form.html",
        {
            "workflow": workflow,
            "suite": suite,
            "case": case,
            "name": name,
            "form": form,
            "rows": rows,
            "free_fields": fields is None,
            "expected_json": request.POST.get(EXPECTED_JSON, "")
            if request.method == "POST"
            else json.dumps(expected_values, indent=2),
            "errors": errors,
            "general": general,
            "samples": [s for s in schema.get("examples", []) if isinstance(s, dict)],
        },
        status=status if request.method == "POST" else 200,
    )


@login_required
@require_POST
def case_delete(request: HttpRequest, slug: str, pk: int) -> HttpResponse:
    workflow = _editable(request, slug)
    case = EvaluationCase.objects.filter(suite=_suite_or_404(workflow), pk=pk).first()
    if case is None:
        raise Http404("No such case.")
    try:
        evaluation_case_delete(actor=_user(request), case=case)
    except SuiteLoosening as error:
        messages.error(request, error.message)
        return redirect("evaluations:suite", slug=slug)
    messages.success(request, f'Removed the case "{case.name}".')
    return redirect("evaluations:suite", slug=slug)


@login_required
@require_POST
def cases_import(request: HttpRequest, slug: str) -> HttpResponse:
    """Add a case per reviewer's approval of this workflow's checked step (skipping those imported before)."""
    workflow = _editable(request, slug)
    added, skipped = evaluation_cases_import_corrections(actor=_user(request), suite=_suite_or_404(workflow))
    text = f"Added {added} case{'s' if added != 1 else ''} from reviewers' corrections."
    if skipped:
        text += f" Skipped {len(skipped)}: " + " ".join(skipped[:5]) + (" …" if len(skipped) > 5 else "")
    (messages.success if added or not skipped else messages.warning)(request, text)
    return redirect("evaluations:suite", slug=slug)


@login_required
@require_POST
def case_from_run(request: HttpRequest, slug: str) -> HttpResponse:
    """A case from a recorded run of this workflow (its inputs, and its checked output as the expectation)."""
    workflow = _editable(request, slug)
    suite = _suite_or_404(workflow)
    try:
        run_id = int(request.POST.get("run", ""))
    except ValueError:
        messages.error(request, "Choose a run.")
        return redirect("evaluations:suite", slug=slug)
    run = run_get_for_user(request.user, run_id=run_id)
    try:
        case = evaluation_case_from_run(actor=_user(request), suite=suite, run=run)
    except ApplicationError as error:
        messages.error(request, error.message)
        return redirect("evaluations:suite", slug=slug)
    messages.success(
        request, f'Added the case "{case.name}". Check its expected values: they are what the run produced.'
    )
    return redirect("evaluations:case-edit", slug=slug, pk=case.pk)


@login_required
@require_POST
def suite_run(request: HttpRequest, slug: str) -> HttpResponse:
    """Run the suite on the draft (nothing is published)."""
    workflow = _editable(request, slug)
    try:
        report = evaluation_report_start(actor=_user(request), workflow=workflow)
    except ApplicationError as error:
        messages.error(request, error.message)
        return redirect("evaluations:suite", slug=slug)
    return redirect("evaluations:report", slug=slug, pk=report.pk)


@login_required
@require_POST
def publish(request: HttpRequest, slug: str) -> HttpResponse:
    """The builder's "Publish" for a workflow with a suite: publish now when the suite already passed on exactly
    this draft, else run it and publish when it passes (the report page shows its progress)."""
    workflow = _editable(request, slug)
    revision = request.POST.get("revision", "")
    try:
        # The revision check happens in the publish transaction, with the draft locked.
        version, report = evaluation_publish(
            actor=_user(request),
            workflow=workflow,
            note=request.POST.get("note", ""),
            expected_revision=int(revision) if revision.isdigit() else None,
        )
    except ApplicationError as error:
        problems = error.extra.get("problems") or []
        messages.error(request, " ".join([error.message, *[str(p) for p in problems]]))
        return redirect("workflows:editor", slug=slug)
    if version is not None:
        messages.success(request, f"Published version {version.number}. New runs use it; running ones keep theirs.")
        return redirect("workflows:versions", slug=slug)
    assert report is not None
    messages.info(request, "The evaluation suite is running on this draft; it is published when the suite passes.")
    return redirect("evaluations:report", slug=slug, pk=report.pk)


@login_required
def report_page(request: HtmxHttpRequest, slug: str, pk: int) -> HttpResponse:
    """A report: live progress while its case runs go (htmx polls the progress fragment, and the page reloads
    when the report is scored), then each criterion and each case, field by field."""
    report = report_get_for_user(request.user, slug=slug, pk=pk)
    if request.htmx:
        if report.is_finished:
            return HttpResponseClientRefresh()
        return render(request, "evaluations/_progress.html", {"report": report, "progress": report_progress(report)})
    workflow = report.workflow
    draft = workflow_draft_for(workflow)
    can_edit = workflow_can_edit(request.user, workflow)
    still_draft = (
        draft is not None
        and draft.pk == report.version_id
        and draft.revision == report.draft_revision
        and content_checksum(draft) == report.content_checksum
    )
    return render(
        request,
        "evaluations/report.html",
        {
            "workflow": workflow,
            "report": report,
            "results": report_results(report),
            "progress": report_progress(report),
            "can_edit": can_edit,
            "can_override": can_edit
            and "admin" in user_roles(request.user)
            and report.state in (EvaluationReport.State.FAILED, EvaluationReport.State.ERROR)
            and bool(still_draft),
            "step_label": _step_label(report.version.graph, report.step_key),
            # Which sets of cases failed, in words: the established cases first, they are what the gate trusts.
            "failed_scopes": [
                scope
                for scope in ("the suite's established cases", "all cases")
                if any(o.get("scope", "all cases") == scope and not o.get("passed") for o in report.outcomes)
            ],
            "established_ids": set((report.criteria.get("baseline") or {}).get("cases") or []),
        },
    )


@login_required
@require_POST
def override(request: HttpRequest, slug: str, pk: int) -> HttpResponse:
    """An admin publishes the report's draft although its suite did not pass, with a reason (audited)."""
    workflow = _editable(request, slug)
    report = report_get_for_user(request.user, slug=slug, pk=pk)
    draft = workflow_draft_for(workflow)
    reason = request.POST.get("reason", "").strip()
    if not reason:
        messages.error(request, "Give the reason for publishing over the evaluation suite: it is recorded.")
        return redirect("evaluations:report", slug=slug, pk=report.pk)
    if draft is None or draft.pk != report.version_id:
        messages.error(request, "This report's draft has been published or replaced; nothing was published.")
        return redirect("evaluations:report", slug=slug, pk=report.pk)
    # The override is over this report: the draft must still hold the content it ran on, at the revision it ran
    # on (checked again with the draft locked by the publish), or the admin would publish what nobody evaluated.
    if content_checksum(draft) != report.content_checksum or draft.revision != report.draft_revision:
        messages.error(
            request,
            "The draft changed after this report ran, so the report says nothing about it; nothing was published. "
            "Run the suite on the draft as it is now.",
        )
        return redirect("evaluations:report", slug=slug, pk=report.pk)
    try:
        version = workflow_version_publish(
            actor=_user(request),
            version=draft,
            note=request.POST.get("note", ""),
            override_reason=reason,
            expected_revision=report.draft_revision,
        )
    except Forbidden as error:
        raise PermissionDenied(error.message) from error
    except ApplicationError as error:
        messages.error(request, " ".join([error.message, *[str(p) for p in error.extra.get("problems") or []]]))
        return redirect("evaluations:report", slug=slug, pk=report.pk)
    messages.success(request, f"Published version {version.number} over the evaluation suite. The reason is recorded.")
    return redirect("workflows:versions", slug=slug)


@login_required
def compare(request: HttpRequest, slug: str) -> HttpResponse:
    """Finished reports side by side across versions: per-field accuracy, pass rate, cost and latency."""
    workflow = workflow_get_for_user(request.user, slug=slug)
    return render(
        request,
        "evaluations/compare.html",
        {"workflow": workflow, "suite": suite_for(workflow), **reports_compared(workflow)},
    )
