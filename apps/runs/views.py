"""Run pages: the "Run" form of a workflow, the live run page, and run lists."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from apps.core.exceptions import ApplicationError, ValidationFailed
from apps.core.htmx import HtmxHttpRequest
from apps.runs.selectors import run_get_for_user, run_list_for_user, step_run_list
from apps.runs.services import run_start
from apps.workflows.input_schema import input_form_class
from apps.workflows.selectors import (
    workflow_can_run,
    workflow_get_for_user,
    workflow_version_published_latest,
)

RECENT_RUNS = 20


def _samples(schema: dict[str, Any]) -> list[dict[str, Any]]:
    examples = schema.get("examples", [])
    return [example for example in examples if isinstance(example, dict)]


@login_required
def run_create(request: HttpRequest, slug: str) -> HttpResponse:
    """The form generated from the published version's input schema; POST starts a run."""
    workflow = workflow_get_for_user(request.user, slug=slug)
    if not workflow_can_run(request.user, workflow):
        raise PermissionDenied("You may view this workflow but not run it.")
    version = workflow_version_published_latest(workflow)
    if version is None:
        context = {"workflow": workflow, "error": f'"{workflow.name}" has no published version yet.'}
        return render(request, "runs/run_create.html", context, status=409)
    form_class = input_form_class(version.input_schema)
    samples = _samples(version.input_schema)
    error = ""
    if request.method == "POST":
        form = form_class(data=request.POST)
        if form.is_valid():
            try:
                run, _ = run_start(actor=request.user, workflow=workflow, inputs=form.cleaned_data)  # type: ignore[arg-type]
            except ValidationFailed as refusal:
                for field, messages in refusal.fields.items():
                    for message in messages:
                        form.add_error(field if field in form.fields else None, message)
            except ApplicationError as refusal:
                error = refusal.message
            else:
                return redirect("runs:detail", run_id=run.pk)
    else:
        initial: dict[str, Any] = {}
        sample = request.GET.get("sample", "")
        if sample.isdigit() and 0 < int(sample) <= len(samples):
            initial = samples[int(sample) - 1]
        form = form_class(initial=initial)
    status = 400 if request.method == "POST" else 200
    return render(
        request,
        "runs/run_create.html",
        {"workflow": workflow, "version": version, "form": form, "samples": samples, "error": error},
        status=status,
    )


@login_required
def run_detail(request: HttpRequest, run_id: int) -> HttpResponse:
    """The live run page: the same fragments the WebSocket pushes, rendered from the database."""
    run = run_get_for_user(request.user, run_id=run_id)
    return render(request, "runs/run_detail.html", {"run": run, "steps": step_run_list(run)})


@login_required
def run_list(request: HtmxHttpRequest) -> HttpResponse:
    """Recent runs the user may see; with `?workflow=<slug>` only that workflow's (an htmx fragment)."""
    runs = run_list_for_user(request.user)
    slug = request.GET.get("workflow")
    if slug:
        workflow = workflow_get_for_user(request.user, slug=slug)
        runs = runs.filter(workflow=workflow)
    context = {"runs": runs[:RECENT_RUNS], "show_workflow": not slug}
    if request.htmx:
        return render(request, "runs/_run_table.html", context)
    return render(request, "runs/run_list.html", context)
