"""Trigger pages: a workflow's triggers (list, add, change, pause, resume, delete, rotate a webhook's secret), one
trigger's page with its history, a form trigger's page, and the webhook endpoint.

They live in the runs app because a trigger's page shows the runs it started and a form or webhook starts runs:
the workflows app, below this one, cannot import run starting. Who may do what: whoever may see the workflow reads
its triggers; whoever may change it manages them; a form is for those who may run the workflow.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, QueryDict
from django.http.request import RawPostDataException
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_POST

from apps.core.exceptions import ApplicationError, ValidationFailed
from apps.runs.documents import input_form_posted
from apps.runs.mailbox_poll import mailbox_choices_for, mailbox_poll_request, mailbox_state_for
from apps.runs.triggers import (
    CATCH_UP_LIMIT,
    Outcome,
    WebhookRequest,
    email_address_for,
    form_submit,
    form_trigger_for_user,
    trigger_create,
    trigger_delete,
    trigger_firing_list,
    trigger_get_for_user,
    trigger_list_for_workflow,
    trigger_pause,
    trigger_resume,
    trigger_secret_rotate,
    trigger_update,
    webhook_receive,
    workflows_for_event_source,
)
from apps.workflows.input_schema import input_form_class, property_order
from apps.workflows.models import Trigger, Workflow
from apps.workflows.selectors import workflow_can_edit, workflow_get_for_user, workflow_version_published_latest
from apps.workflows.triggers import (
    EVENT_OUTCOMES,
    KINDS,
    REPLAY_WINDOW_SECONDS,
    WEBHOOK_MAX_BYTES,
    inputs_mapping_parse,
    inputs_mapping_text,
    schedule_describe,
    schedule_next,
    trigger_config_clean,
)

HISTORY_PAGE_SIZE = 25
KIND_HELP = {
    "form": "A page with the workflow's input form that colleagues who may run it fill in.",
    "schedule": "Runs at set times, such as every Monday at 08:00 in your time zone.",
    "webhook": "Another system sends a signed HTTP request; each request starts a run.",
    "email": "Mail to an address of its own, or arriving in a mailbox it reads, starts a run with its subject, text "
    "and attachments.",
    "event": "Runs when another workflow finishes, with that run's output as input.",
    "chat": "A conversation page under Assistant: colleagues who may run the workflow chat with it, each message a "
    "run with the message and the conversation so far.",
}
# What each kind's payload holds, for the input mapping's help text.
PAYLOAD_FIELDS = {
    "form": [],
    "schedule": ["scheduled_at (UTC)", "scheduled_at_local", "trigger"],
    "webhook": ["the fields of the JSON body"],
    "email": ["subject", "sender", "to", "text", "message_id", "date", "attachments", "documents", "notes"],
    "event": ["run", "workflow", "status", "output", "inputs", "error", "and each field of the output"],
    "chat": [],
}
COMMON_ZONES = (
    "UTC",
    "Europe/London",
    "Europe/Paris",
    "Europe/Berlin",
    "Europe/Zurich",
    "Europe/Madrid",
    "Europe/Rome",
    "Europe/Warsaw",
    "Europe/Helsinki",
    "America/New_York",
    "America/Chicago",
    "America/Denver",
    "America/Los_Angeles",
    "America/Sao_Paulo",
    "Asia/Dubai",
    "Asia/Kolkata",
    "Asia/Singapore",
    "Asia/Tokyo",
    "Australia/Sydney",
)


def _manageable(request: HttpRequest, trigger: Trigger) -> None:
    if not workflow_can_edit(request.user, trigger.workflow):
        raise PermissionDenied("Only those who may change this workflow manage its triggers.")


def _absolute(request: HttpRequest, path: str) -> str:
    return request.build_absolute_uri(path)


def _row(request: HttpRequest, trigger: Trigger) -> dict[str, Any]:
    """What the list and a trigger's page show about where and when a trigger fires."""
    row: dict[str, Any] = {"trigger": trigger}
    if trigger.kind == Trigger.Kind.FORM:
        row["url"] = _absolute(request, reverse("runs:trigger-form", args=[trigger.pk]))
    elif trigger.kind == Trigger.Kind.WEBHOOK:
        row["url"] = _absolute(request, reverse("hooks:receive", args=[trigger.token]))
    elif trigger.kind == Trigger.Kind.EMAIL:
        # --- a mailbox it reads, or its inbound address ---
        row["mailbox"] = mailbox_state_for(trigger)
        if row["mailbox"] is None:
            row["address"] = email_address_for(trigger)
    elif trigger.kind == Trigger.Kind.SCHEDULE:
        row["description"] = schedule_describe(trigger.config.get("cron", ""))
        row["timezone"] = trigger.config.get("timezone", "")
    return row


@login_required
def trigger_list(request: HttpRequest, slug: str) -> HttpResponse:
    """A workflow's triggers: where each fires, its state and its last firing; editors add and manage them."""
    workflow = workflow_get_for_user(request.user, slug=slug)
    rows = [_row(request, trigger) for trigger in trigger_list_for_workflow(workflow)]
    context = {
        "workflow": workflow,
        "rows": rows,
        "can_edit": workflow_can_edit(request.user, workflow),
        "kinds": [(kind, Trigger.Kind(kind).label, KIND_HELP[kind]) for kind in KINDS],
        "published": workflow_version_published_latest(workflow) is not None,
    }
    return render(request, "runs/trigger_list.html", context)


def _settings_from_post(kind: str, data: QueryDict) -> tuple[dict[str, Any], str]:
    """A kind's settings as the page's fields give them, and the mapping box's text."""
    config: dict[str, Any] = {}
    if kind == "form":
        config = {"intro": data.get("intro", ""), "next_steps": data.get("next_steps", "")}
    elif kind == "schedule":
        config = {
            "cron": data.get("cron", ""),
            "timezone": data.get("timezone", "").strip(),
            "skip_missed": data.get("skip_missed") == "on",
        }
    elif kind == "event":
        config = {"outcomes": data.getlist("outcomes") or ["succeeded"]}
    elif kind == "chat":  # --- the assistant's title and greeting ---
        config = {"title": data.get("title", ""), "greeting": data.get("greeting", "")}
    elif kind == "email":  # --- the inbound address, or a mailbox to read ---
        config = {"receive": data.get("receive", "address"), "connection": data.get("connection", "").strip()}
    return config, data.get("inputs", "")


def _preview(kind: str, config: dict[str, Any]) -> dict[str, Any] | None:
    """A schedule's description and next five times, when its settings are valid."""
    if kind != "schedule":
        return None
    settings_, errors = trigger_config_clean(kind, config, None)
    if errors.get("cron") or errors.get("timezone"):
        return None
    cron, zone = settings_.config["cron"], settings_.config["timezone"]
    return {
        "description": schedule_describe(cron),
        "zone": zone,
        "times": schedule_next(cron, zone, datetime.now(ZoneInfo(zone)), count=5),
    }


def _form_context(workflow: Workflow, kind: str, request: HttpRequest, **extra: Any) -> dict[str, Any]:
    version = workflow_version_published_latest(workflow)
    schema = version.input_schema if version is not None else {}
    return {
        "workflow": workflow,
        "kind": kind,
        "kind_label": Trigger.Kind(kind).label,
        "kind_help": KIND_HELP[kind],
        "payload_fields": PAYLOAD_FIELDS[kind],
        "input_fields": property_order(schema),
        "zones": COMMON_ZONES,
        "outcome_choices": EVENT_OUTCOMES,
        "sources": workflows_for_event_source(request.user, workflow) if kind == "event" else [],
        "mailboxes": mailbox_choices_for(request.user, workflow) if kind == "email" else [],  # type: ignore[arg-type]
        **extra,
    }


@login_required
@require_http_methods(["GET", "POST"])
def trigger_new(request: HttpRequest, slug: str, kind: str) -> HttpResponse:
    """Add a trigger of one kind. A webhook's secret is shown once, on the page this answers with."""
    workflow = workflow_get_for_user(request.user, slug=slug)
    if kind not in KINDS:
        raise Http404("No such kind of trigger.")
    if not workflow_can_edit(request.user, workflow):
        raise PermissionDenied("Only those who may change this workflow manage its triggers.")
    values: dict[str, Any] = {
        "timezone": "Europe/Berlin" if kind == "schedule" else "",
        "outcomes": ["succeeded"],
        "receive": "address",
    }
    errors: dict[str, list[str]] = {}
    preview = None
    if request.method == "POST":
        config, mapping_text = _settings_from_post(kind, request.POST)
        values = {**config, "name": request.POST.get("name", ""), "inputs": mapping_text}
        values["source"] = request.POST.get("source", "")
        mapping, mapping_problems = inputs_mapping_parse(mapping_text)
        preview = _preview(kind, config)
        if request.POST.get("action") != "preview":
            try:
                if mapping_problems:
                    raise ValidationFailed("The trigger is not valid.", fields={"inputs": mapping_problems})
                trigger, secret = trigger_create(
                    actor=request.user,  # type: ignore[arg-type]
                    workflow=workflow,
                    kind=kind,
                    name=values["name"],
                    config=config,
                    inputs=mapping,
                    source=values["source"],
                )
            except ValidationFailed as refusal:
                errors = refusal.fields
            else:
                if secret:
                    return _secret_page(request, trigger, secret, created=True)
                messages.success(request, f"{trigger} was added.")
                return redirect("runs:trigger-detail", trigger_id=trigger.pk)
    context = _form_context(workflow, kind, request, values=values, errors=errors, preview=preview, creating=True)
    return render(request, "runs/trigger_edit.html", context, status=400 if errors else 200)


@login_required
@require_http_methods(["GET", "POST"])
def trigger_edit(request: HttpRequest, trigger_id: int) -> HttpResponse:
    """Change a trigger's name, settings and input mapping."""
    trigger = trigger_get_for_user(request.user, trigger_id=trigger_id)
    _manageable(request, trigger)
    values: dict[str, Any] = {
        **trigger.config,
        "name": trigger.name,
        "inputs": inputs_mapping_text(trigger.inputs),
        "source": trigger.source_workflow.slug if trigger.source_workflow else "",
        "receive": "mailbox" if trigger.config.get("connection") else "address",
    }
    errors: dict[str, list[str]] = {}
    preview = _preview(trigger.kind, trigger.config)
    if request.method == "POST":
        config, mapping_text = _settings_from_post(trigger.kind, request.POST)
        values = {**config, "name": request.POST.get("name", ""), "inputs": mapping_text, "source": values["source"]}
        mapping, mapping_problems = inputs_mapping_parse(mapping_text)
        preview = _preview(trigger.kind, config)
        if request.POST.get("action") != "preview":
            try:
                if mapping_problems:
                    raise ValidationFailed("The trigger is not valid.", fields={"inputs": mapping_problems})
                trigger_update(
                    actor=request.user,  # type: ignore[arg-type]
                    trigger=trigger,
                    name=values["name"],
                    config=config,
                    inputs=mapping,
                )
            except ValidationFailed as refusal:
                errors = refusal.fields
            else:
                messages.success(request, "The trigger was saved.")
                return redirect("runs:trigger-detail", trigger_id=trigger.pk)
    context = _form_context(
        trigger.workflow, trigger.kind, request, values=values, errors=errors, preview=preview, trigger=trigger
    )
    return render(request, "runs/trigger_edit.html", context, status=400 if errors else 200)


_SAMPLE_VALUES = {"string": "Printer on the 2nd floor is jammed", "integer": 2, "number": 1.5, "boolean": True}


def _example_body(trigger: Trigger) -> str:
    """A JSON body that fits the trigger, for its signing examples: the payload fields its mapping reads, else
    the workflow's input fields, with sample values."""
    import json
    import re

    names = sorted({m for e in trigger.inputs.values() for m in re.findall(r"payload\.([A-Za-z_]\w*)", e)})
    version = workflow_version_published_latest(trigger.workflow)
    properties = (version.input_schema.get("properties") or {}) if version is not None else {}
    if not names:
        names = property_order(version.input_schema)[:3] if version is not None else []
    body = {name: _SAMPLE_VALUES.get(str((properties.get(name) or {}).get("type")), "value") for name in names}
    return json.dumps(body or {"field": "value"})


def _secret_page(request: HttpRequest, trigger: Trigger, secret: str, *, created: bool) -> HttpResponse:
    context = {
        "trigger": trigger,
        "workflow": trigger.workflow,
        "secret": secret,
        "created": created,
        "url": _absolute(request, reverse("hooks:receive", args=[trigger.token])),
        "window": REPLAY_WINDOW_SECONDS,
        "example_body": _example_body(trigger),
    }
    response = render(request, "runs/trigger_secret.html", context)
    response["Cache-Control"] = "no-store"  # the secret must not stay in a browser's or a proxy's cache
    return response


@login_required
def trigger_detail(request: HttpRequest, trigger_id: int) -> HttpResponse:
    """One trigger: where and when it fires, how to call it (a webhook's signing), and its history, paged."""
    trigger = trigger_get_for_user(request.user, trigger_id=trigger_id)
    page = Paginator(trigger_firing_list(trigger), HISTORY_PAGE_SIZE).get_page(request.GET.get("page"))
    row = _row(request, trigger)
    preview = _preview(trigger.kind, trigger.config) if trigger.enabled else None
    context = {
        "trigger": trigger,
        "workflow": trigger.workflow,
        "row": row,
        "page": page,
        "preview": preview,
        "can_edit": workflow_can_edit(request.user, trigger.workflow),
        "window": REPLAY_WINDOW_SECONDS,
        "catch_up_limit": CATCH_UP_LIMIT,
        "max_kb": WEBHOOK_MAX_BYTES // 1024,
        "mapping": inputs_mapping_text(trigger.inputs),
        "example_body": _example_body(trigger) if trigger.kind == Trigger.Kind.WEBHOOK else "",
        "outcomes": dict(Outcome.choices),
    }
    return render(request, "runs/trigger_detail.html", context)


@login_required
@require_POST
def trigger_pause_view(request: HttpRequest, trigger_id: int) -> HttpResponse:
    """Pause a trigger (409-style message when it already is)."""
    trigger = trigger_get_for_user(request.user, trigger_id=trigger_id)
    _manageable(request, trigger)
    try:
        trigger_pause(actor=request.user, trigger=trigger)  # type: ignore[arg-type]
    except ApplicationError as refusal:
        messages.error(request, refusal.message)
    else:
        messages.success(request, f"“{trigger.name}” is paused: it starts no runs until you resume it.")
    return redirect(_back(request, trigger))


@login_required
@require_POST
def trigger_resume_view(request: HttpRequest, trigger_id: int) -> HttpResponse:
    """Resume a trigger; for a schedule, say how many of its times passed while paused."""
    trigger = trigger_get_for_user(request.user, trigger_id=trigger_id)
    _manageable(request, trigger)
    try:
        _, skipped = trigger_resume(actor=request.user, trigger=trigger)  # type: ignore[arg-type]
    except ApplicationError as refusal:
        messages.error(request, refusal.message)
    else:
        note = ""
        if trigger.kind == Trigger.Kind.SCHEDULE:
            note = (
                f" {skipped} scheduled time{'s' if skipped != 1 else ''} passed while it was paused and "
                f"{'were' if skipped != 1 else 'was'} skipped; the next one counts from now."
            )
        messages.success(request, f"“{trigger.name}” is active again.{note}")
    return redirect(_back(request, trigger))


@login_required
@require_POST
def trigger_check_view(request: HttpRequest, trigger_id: int) -> HttpResponse:
    """Check now, for an email trigger that reads a mailbox: its poll runs at once instead of at its next time."""
    trigger = trigger_get_for_user(request.user, trigger_id=trigger_id)
    _manageable(request, trigger)
    try:
        mailbox_poll_request(actor=request.user, trigger=trigger)  # type: ignore[arg-type]
    except ApplicationError as refusal:
        messages.error(request, refusal.message)
    else:
        messages.success(request, "The mailbox is being checked now: reload this page in a few seconds.")
    return redirect("runs:trigger-detail", trigger_id=trigger.pk)


def _back(request: HttpRequest, trigger: Trigger) -> str:
    if request.POST.get("back") == "list":
        return reverse("runs:triggers", args=[trigger.workflow.slug])
    return reverse("runs:trigger-detail", args=[trigger.pk])


@login_required
@require_http_methods(["GET", "POST"])
def trigger_delete_view(request: HttpRequest, trigger_id: int) -> HttpResponse:
    """Ask, then delete a trigger and its history (the runs it started stay)."""
    trigger = trigger_get_for_user(request.user, trigger_id=trigger_id)
    _manageable(request, trigger)
    if request.method == "POST":
        trigger_delete(actor=request.user, trigger=trigger)  # type: ignore[arg-type]
        messages.success(request, f"{trigger} was deleted. The runs it started are kept.")
        return redirect("runs:triggers", slug=trigger.workflow.slug)
    firings = trigger.firings.count()
    return render(
        request, "runs/trigger_delete.html", {"trigger": trigger, "workflow": trigger.workflow, "firings": firings}
    )


@login_required
@require_POST
def trigger_rotate_view(request: HttpRequest, trigger_id: int) -> HttpResponse:
    """Give a webhook a new secret, shown once on the page this answers with."""
    trigger = trigger_get_for_user(request.user, trigger_id=trigger_id)
    _manageable(request, trigger)
    try:
        secret = trigger_secret_rotate(actor=request.user, trigger=trigger)  # type: ignore[arg-type]
    except ApplicationError as refusal:
        messages.error(request, refusal.message)
        return redirect("runs:trigger-detail", trigger_id=trigger.pk)
    return _secret_page(request, trigger, secret, created=False)


# --- a form trigger's page --------------------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def trigger_form(request: HttpRequest, trigger_id: int) -> HttpResponse:
    """A form trigger's page: the workflow's input form; submitting it starts a run as the person submitting."""
    try:
        trigger = form_trigger_for_user(request.user, trigger_id=trigger_id)
    except ApplicationError as refusal:
        raise PermissionDenied(refusal.message) from None
    workflow = trigger.workflow
    version = workflow_version_published_latest(workflow)
    context: dict[str, Any] = {"trigger": trigger, "workflow": workflow}
    if not trigger.enabled:
        context["error"] = "This form is paused: it does not take requests for now. Try again later."
        return render(request, "runs/trigger_run_form.html", context, status=409)
    if version is None:
        context["error"] = "This workflow has no published version yet, so the form cannot take requests."
        return render(request, "runs/trigger_run_form.html", context, status=409)
    form_class = input_form_class(version.input_schema)
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
            firing = form_submit(actor=request.user, trigger=trigger, inputs=form.cleaned_data)  # type: ignore[arg-type]
            if firing.run is not None:
                done = {**context, "run": firing.run, "next_steps": trigger.config.get("next_steps", "")}
                return render(request, "runs/trigger_run_submitted.html", done, status=201)
            for name, problems in firing.fields.items():
                for problem in problems:
                    form.add_error(name if name in form.fields else None, problem)
            if not firing.fields:
                error = firing.detail
    else:
        form = form_class()
    context.update(form=form, error=error, version=version)
    return render(request, "runs/trigger_run_form.html", context, status=400 if request.method == "POST" else 200)


# --- the webhook endpoint ----------------------------------------------------------------------------------------


@csrf_exempt
def webhook(request: HttpRequest, token: str) -> HttpResponse:
    """POST /hooks/<token>/: a signed JSON request starts a run (202), a repeat answers with its run (200).

    No sign-in and no CSRF token: the HMAC signature over the timestamp, the Idempotency-Key and the raw body is
    the authentication; the exact same signed request sent again is answered 200 with its first run. Refusals are
    short JSON reasons: 401 bad or old signature, 409 paused, 413 too large, 415 not JSON, 400 the input does not
    fit (with field errors), 422 an Idempotency-Key reused for another body, 404 no such webhook, 503 the signing
    secret cannot be read with the server's keys, 429 (with Retry-After) a bad signature or oversized body past
    the webhook's limit of recorded refusals in this minute."""
    if request.method != "POST":
        response = JsonResponse({"detail": "Send a POST request with a JSON body."}, status=405)
        response["Allow"] = "POST"
        return response
    declared = request.META.get("CONTENT_LENGTH") or "0"
    too_large = not declared.isdigit() or int(declared) > WEBHOOK_MAX_BYTES
    # The declared length is checked first, so reading the body never holds more than the limit.
    try:
        body = b"" if too_large else request.body
    except RawPostDataException:
        # A multipart body was parsed for its fields already (NulCharacterMiddleware reads form fields), so its
        # raw bytes are gone; a webhook takes JSON only, and webhook_receive refuses the content type.
        body = b""
    too_large = too_large or len(body) > WEBHOOK_MAX_BYTES
    _, firing = webhook_receive(
        WebhookRequest(
            token=token,
            body=body,
            content_type=request.content_type or "",
            timestamp=request.headers.get("X-AIOS-Timestamp", "").strip(),
            signature=request.headers.get("X-AIOS-Signature", "").strip(),
            idempotency_key=request.headers.get("Idempotency-Key", "").strip(),
            too_large=too_large,
        ),
        now=timezone.now().timestamp(),
    )
    answer: dict[str, Any] = {"detail": firing.detail}
    if firing.fields:
        answer["fields"] = firing.fields
    if firing.run is not None:
        answer.update(
            run=firing.run.pk,
            status=firing.run.status,
            url=_absolute(request, reverse("runs:detail", args=[firing.run.pk])),
            duplicate=firing.outcome == Outcome.DUPLICATE,
        )
    response = JsonResponse(answer, status=firing.status)
    if firing.retry_after:
        response["Retry-After"] = str(firing.retry_after)
    return response
