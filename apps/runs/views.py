"""Run pages: the "Run" form of a workflow, the live run page, and run lists."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST
from django_htmx.http import HttpResponseClientRedirect

from apps.core.exceptions import ApplicationError, Forbidden, RateLimited, ValidationFailed
from apps.core.htmx import HtmxHttpRequest
from apps.runs.agent import tool_call_confirm
from apps.runs.documents import input_form_posted
from apps.runs.draft_tests import run_test_start
from apps.runs.models import StepRun
from apps.runs.selectors import (
    incident_get_for_user,
    run_can_operate,
    run_diff,
    run_get_for_user,
    run_list_for_user,
    run_page_context,
)
from apps.runs.services import (
    incident_resolve,
    run_cancel,
    run_replay,
    run_restart,
    run_start,
    run_start_rate_check,
)
from apps.workflows.input_schema import input_form_class
from apps.workflows.selectors import (
    draft_sample_inputs,
    workflow_can_edit,
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
        form, valid = input_form_posted(
            actor=request.user,  # type: ignore[arg-type]
            schema=version.input_schema,
            form_class=form_class,
            files=request.FILES,
            data=request.POST,
        )
        if valid:
            try:
                run_start_rate_check(actor=request.user)  # type: ignore[arg-type]
                run, _ = run_start(actor=request.user, workflow=workflow, inputs=form.cleaned_data)  # type: ignore[arg-type]
            except RateLimited as refusal:
                response = render(
                    request,
                    "runs/run_create.html",
                    {
                        "workflow": workflow,
                        "version": version,
                        "form": form,
                        "samples": samples,
                        "error": refusal.message,
                    },
                    status=429,
                )
                response["Retry-After"] = str(refusal.retry_after)
                return response
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
    return render(request, "runs/run_detail.html", run_page_context(request.user, run))


def _forbidden_is_403(refusal: ApplicationError) -> None:
    """A refusal because of rights answers 403 on pages as in the API, not a redirect with a message."""
    if isinstance(refusal, Forbidden):
        raise PermissionDenied(refusal.message)


def _operate(request: HttpRequest, run_id: int) -> Any:
    run = run_get_for_user(request.user, run_id=run_id)
    if not run_can_operate(request.user, run):
        raise PermissionDenied("You may view this run but not operate it.")
    return run


@login_required
@require_POST
def run_cancel_view(request: HttpRequest, run_id: int) -> HttpResponse:
    """Cancel the run (409 with a message if it already finished)."""
    run = _operate(request, run_id)
    try:
        run_cancel(run=run, actor=request.user, reason=request.POST.get("reason", "")[:500])  # type: ignore[arg-type]
    except ApplicationError as refusal:
        _forbidden_is_403(refusal)
        messages.error(request, refusal.message)
        return _to_run_page(request, run.pk)
    messages.success(request, f"Run #{run.pk} was cancelled.")
    return _to_run_page(request, run.pk)


@login_required
@require_POST
def run_restart_view(request: HttpRequest, run_id: int) -> HttpResponse:
    """Start a new run from the chosen step, reusing the recorded outputs before it."""
    run = _operate(request, run_id)
    try:
        new = run_restart(
            run=run,
            step_key=request.POST.get("step_key", ""),
            actor=request.user,  # type: ignore[arg-type]
            send_again=request.POST.get("send_again") == "on",
        )
    except ApplicationError as refusal:
        _forbidden_is_403(refusal)
        messages.error(request, refusal.message)
        return _to_run_page(request, run.pk)
    messages.success(request, f'Run #{new.pk} restarts run #{run.pk} from step "{new.restart_step_key}".')
    return _to_run_page(request, new.pk)


@login_required
@require_POST
def run_replay_view(request: HttpRequest, run_id: int) -> HttpResponse:
    """Re-execute the run from its recorded model calls (nothing is sent to a model or outside system)."""
    run = _operate(request, run_id)
    try:
        new = run_replay(run=run, actor=request.user)  # type: ignore[arg-type]
    except ApplicationError as refusal:
        _forbidden_is_403(refusal)
        messages.error(request, refusal.message)
        return _to_run_page(request, run.pk)
    messages.success(request, f"Run #{new.pk} replays run #{run.pk} from its recordings.")
    return _to_run_page(request, new.pk)


@login_required
@require_POST
def run_what_if_view(request: HttpRequest, run_id: int) -> HttpResponse:
    """Re-run from a step with another prompt or model; the new run's page links to the diff."""
    run = _operate(request, run_id)
    step_key = request.POST.get("step_key", "")
    changes = {name: request.POST[name] for name in ("prompt", "system", "model") if request.POST.get(name, "").strip()}
    try:
        if not changes:
            raise ValidationFailed("Change the prompt or the model for a what-if run.", fields={"prompt": ["Empty."]})
        new = run_restart(run=run, step_key=step_key, actor=request.user, overrides={step_key: changes})  # type: ignore[arg-type]
    except ApplicationError as refusal:
        _forbidden_is_403(refusal)
        detail = "; ".join(m for messages_ in refusal.extra.get("fields", {}).values() for m in messages_)
        messages.error(request, f"{refusal.message} {detail}".strip())
        return _to_run_page(request, run.pk)
    messages.success(request, f'Run #{new.pk} re-runs run #{run.pk} from step "{step_key}" with your changes.')
    return _to_run_page(request, new.pk)


@login_required
def run_diff_view(request: HttpRequest, run_id: int) -> HttpResponse:
    """Field by field: how this what-if or replay run's step outputs differ from the original run's."""
    run = run_get_for_user(request.user, run_id=run_id)
    original_id = run.replay_of_id or run.restarted_from_id
    if original_id is None:
        raise Http404("This run is not a replay or a re-run of another run.")
    original = run_get_for_user(request.user, run_id=original_id)
    return render(request, "runs/run_diff.html", {"run": run, "original": original, **run_diff(original, run)})


@login_required
@require_POST
def incident_resolve_view(request: HttpRequest, incident_id: int) -> HttpResponse:
    """Retry, skip (with a JSON output) or abort the step an incident holds."""
    incident = incident_get_for_user(request.user, incident_id=incident_id)
    run = _operate(request, incident.run_id)
    action = request.POST.get("action", "")
    try:
        output = None
        if action == "skip":
            try:
                output = json.loads(request.POST.get("output") or "{}")
            except json.JSONDecodeError as error:
                raise ValidationFailed(
                    "The output is not valid JSON.", fields={"output": [f"Not valid JSON: {error.msg}."]}
                ) from None
        incident_resolve(incident=incident, actor=request.user, action=action, output=output)  # type: ignore[arg-type]
    except ApplicationError as refusal:
        _forbidden_is_403(refusal)
        detail = "; ".join(m for messages_ in getattr(refusal, "fields", {}).values() for m in messages_)
        messages.error(request, f"{refusal.message} {detail}".strip())
        return _to_run_page(request, run.pk)
    messages.success(request, f"Incident #{incident.pk} resolved: {action}.")
    return _to_run_page(request, run.pk)


@login_required
@require_POST
def tool_call_confirm_view(request: HttpRequest, run_id: int, key: str) -> HttpResponse:
    """The person who started the run confirms or declines an agent's call that waits for her."""
    run = run_get_for_user(request.user, run_id=run_id)
    call = StepRun.objects.filter(run=run, step_key=key, parent__isnull=False).first()
    if call is None:
        raise Http404("No such tool call.")
    confirmed = request.POST.get("answer") == "confirm"
    try:
        tool_call_confirm(step_run=call, actor=request.user, confirmed=confirmed)  # type: ignore[arg-type]
    except ApplicationError as refusal:
        messages.error(request, refusal.message)
    else:
        tool = call.name or key
        messages.success(
            request,
            f"Confirmed: the agent's call of {tool} runs now." if confirmed else f"Declined: {tool} is not done.",
        )
    return _to_run_page(request, run.pk)


def _to_run_page(request: HttpRequest, run_id: int) -> HttpResponse:
    """Post/redirect/get, also for htmx posts (a client-side redirect): the outcome is flashed as a message
    and the page shows the current truth.

    Forms in fragments that the WebSocket pushes post through htmx: a pushed fragment is rendered without
    a request, so it carries no CSRF token of its own; htmx sends the token from <body hx-headers>.
    """
    url = reverse("runs:detail", kwargs={"run_id": run_id})
    return HttpResponseClientRedirect(url) if getattr(request, "htmx", False) else redirect(url)


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


@login_required
@require_POST
def run_test_start_view(request: HttpRequest, slug: str) -> HttpResponse:
    """Test the draft (or one step of it) with a saved sample or a recorded run; opens the live run page."""
    workflow = workflow_get_for_user(request.user, slug=slug)
    if not workflow_can_edit(request.user, workflow):
        raise PermissionDenied("Testing a draft needs the right to change the workflow.")
    step_key = request.POST.get("step") or None
    source = request.POST.get("source", "")
    recorded = None
    inputs: Any = None
    if source.startswith("run:") and source[4:].isdigit():
        recorded = run_list_for_user(request.user).filter(pk=int(source[4:]), workflow=workflow).first()
        if recorded is None:
            raise Http404("No such run.")
    elif source.startswith("sample:") and source[7:].isdigit():
        inputs = draft_sample_inputs(workflow, int(source[7:]))
        if inputs is None:
            raise Http404("No such sample.")
    else:
        inputs = {}
    back = reverse("workflows:editor", args=[slug]) + (f"?step={step_key}#panel" if step_key else "")
    try:
        run = run_test_start(
            actor=request.user,  # type: ignore[arg-type]
            workflow=workflow,
            inputs=inputs,
            step_key=step_key,
            allow_calls=request.POST.getlist("allow_call"),
            recorded_run=recorded,
        )
    except ValidationFailed as refusal:
        details = "; ".join(f"{field}: {' '.join(messages)}" for field, messages in refusal.fields.items())
        messages.error(request, f"{refusal.message} {details}")
        return redirect(back)
    except ApplicationError as refusal:
        problems = refusal.extra.get("problems", [])
        messages.error(
            request,
            refusal.message + (f" ({len(problems)} problem{'s' if len(problems) != 1 else ''})" if problems else ""),
        )
        return redirect(back)
    return redirect("runs:detail", run_id=run.pk)
