"""Pages of the audit viewer, for those who hold audit.view_auditevent (admins and auditors); to anyone else
every page, fragment and download here does not exist (404).

The event list and its filters, one event with its place in its stream, "Verify now" with its live outcome,
and the export of a range with its offline proofs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from functools import wraps
from typing import Any
from urllib.parse import urlencode

from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from apps.audit.export import MAX_EXPORT_EVENTS, audit_export_write
from apps.audit.forms import EventFilterForm, ExportForm
from apps.audit.models import RUN_STREAM_PREFIX, AuditEvent, AuditVerification
from apps.audit.selectors import (
    audit_event_coverage,
    audit_event_neighbours,
    audit_events_for_user,
    audit_may_view,
    audit_newest_checkpoint,
    audit_verifications,
)
from apps.audit.verification import audit_verification_request
from apps.core.exceptions import ApplicationError

PAGE_SIZE = 50

View = Callable[..., HttpResponseBase]


def audit_viewer_required(view: View) -> View:
    """Signed-in holders of the audit permission only; the rest may not learn that the pages exist."""

    @login_required
    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if not audit_may_view(request.user):
            raise Http404("No such page.")
        return view(request, *args, **kwargs)

    return wrapped


def _is_htmx(request: HttpRequest) -> bool:
    return bool(getattr(request, "htmx", False))


@audit_viewer_required
def event_list(request: HttpRequest) -> HttpResponse:
    """Events newest first, filtered by the query string, a page at a time by id (keyset: page 1,000 costs
    what page 1 costs). With htmx, the results alone."""
    # Always bound (an empty query string is a valid "no filters"), so the choices are read once.
    form = EventFilterForm(request.GET)
    events: list[AuditEvent] = []
    older_url = ""
    status = 200
    if not form.is_valid():
        status = 400
    else:
        query = form.apply(audit_events_for_user(request.user))
        before = form.cleaned_data.get("before")
        if before:
            query = query.filter(pk__lt=before)
        events = list(query.order_by("-id")[: PAGE_SIZE + 1])
        if len(events) > PAGE_SIZE:
            events = events[:PAGE_SIZE]
            params = {key: value for key, value in request.GET.items() if key != "before" and value}
            older_url = f"{reverse('audit:events')}?{urlencode({**params, 'before': events[-1].pk})}"
    context = {
        "form": form,
        "events": events,
        "older_url": older_url,
        "paged": bool(status == 200 and form.cleaned_data.get("before")),
        "page_size": PAGE_SIZE,
    }
    template = "audit/_event_results.html" if _is_htmx(request) else "audit/event_list.html"
    return render(request, template, context, status=status)


def _object_url(event: AuditEvent) -> str:
    """The page of the event's object, where one exists: a run's page for anything in a run's stream.
    By route name only: the audit app sits below the apps whose pages these are."""
    run_id = ""
    if event.target_type == "runs.run":
        run_id = event.target_id
    elif event.stream.startswith(RUN_STREAM_PREFIX):
        run_id = event.stream[len(RUN_STREAM_PREFIX) :]
    if run_id.isdigit():
        try:
            return reverse("runs:detail", args=[int(run_id)])
        except NoReverseMatch:
            return ""
    return ""


def _readable(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(_readable(item) for item in value) if value else "none"
    return str(value)


def _data_rows(data: Any, prefix: str = "") -> list[tuple[str, str]]:
    """The event's data as (label, text) rows: nested objects flattened with dotted names."""
    if not isinstance(data, dict):
        return [(prefix or "value", _readable(data))]
    rows: list[tuple[str, str]] = []
    for key in sorted(data):
        label = f"{prefix}.{key}" if prefix else str(key)
        value = data[key]
        if isinstance(value, dict) and value:
            rows.extend(_data_rows(value, label))
        elif isinstance(value, list) and any(isinstance(item, dict) for item in value):
            for index, item in enumerate(value, 1):
                rows.extend(_data_rows(item, f"{label}[{index}]"))
        else:
            rows.append((label.replace("_", " "), _readable(value)))
    return rows


@audit_viewer_required
def event_detail(request: HttpRequest, event_id: int) -> HttpResponse:
    """One event: who, when, what, the data as a table (and raw), its hash, its place in its stream, its
    neighbours, and the anchor and checkpoint that cover it, if any yet."""
    event = get_object_or_404(audit_events_for_user(request.user), pk=event_id)
    previous, following = audit_event_neighbours(event)
    checkpoint = audit_newest_checkpoint()
    coverage = audit_event_coverage(event, checkpoint.anchor_seq if checkpoint else None)
    try:
        data = event.data_dict
    except ValueError:
        data = None
    context = {
        "event": event,
        "data_rows": _data_rows(data) if data else [],
        "previous": previous,
        "following": following,
        "coverage": coverage,
        "checkpoint": checkpoint,
        "object_url": _object_url(event),
        "stream_url": f"{reverse('audit:events')}?{urlencode({'stream': event.stream})}",
    }
    return render(request, "audit/event_detail.html", context)


@audit_viewer_required
@require_http_methods(["GET", "POST"])
def verify(request: HttpRequest) -> HttpResponse:
    """The trail's health: the newest checkpoint, past verifications, and "Verify now" (POST queues one
    for a worker and opens its page, which follows it live)."""
    if request.method == "POST":
        verification, _ = audit_verification_request(actor=request.user)  # type: ignore[arg-type]
        return redirect("audit:verification", verification_id=verification.pk)
    context = {"checkpoint": audit_newest_checkpoint(), "verifications": audit_verifications()}
    return render(request, "audit/verify.html", context)


@audit_viewer_required
def verification_detail(request: HttpRequest, verification_id: int) -> HttpResponse:
    """One verification's outcome; while a worker is on it, the page polls this view for the fragment."""
    verification = get_object_or_404(AuditVerification, pk=verification_id)
    context = {"verification": verification, "checkpoint": audit_newest_checkpoint()}
    if _is_htmx(request):
        return render(request, "audit/_verification.html", context)
    return render(request, "audit/verification.html", context)


@audit_viewer_required
@require_http_methods(["GET", "POST"])
def export(request: HttpRequest) -> HttpResponseBase:
    """The export form; POST writes the file with its proofs and downloads it (the export is audited)."""
    form = ExportForm(request.POST if request.method == "POST" else None)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            data = form.cleaned_data
            # Spooled: small exports stay in memory, big ones go to disk instead of filling it.
            out = tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024)  # noqa: SIM115 - FileResponse closes it
            try:
                summary = audit_export_write(
                    actor=request.user, out=out, since=data.get("since"), until=data.get("until"), stream=data["stream"]
                )
            except ApplicationError as error:
                out.close()
                form.add_error(None, error.message)
            else:
                out.seek(0)
                stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
                response = FileResponse(
                    out, as_attachment=True, filename=f"aios-audit-{stamp}.jsonl", content_type="application/x-ndjson"
                )
                response["X-Audit-Events"] = str(summary.events_in_range)
                return response
        status = 400
    context = {"form": form, "max_events": f"{MAX_EXPORT_EVENTS:,}", "checkpoint": audit_newest_checkpoint()}
    return render(request, "audit/export.html", context, status=status)
