"""The reviewer's pages: the inbox (views, filters, saved views, Next item, bulk approval), the decision view of
one item with its claim, release, skip, reassign and decide actions, her notifications (and the nav's unread
badge) and her out-of-office. Every write goes through apps.approvals.services."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from datetime import date
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.accounts.models import User
from apps.accounts.roles import user_roles
from apps.approvals.calendar import sla_state
from apps.approvals.models import ApprovalQueue, ApprovalRequest, OutOfOffice
from apps.approvals.rules import approval_refusal, user_manages_queue, user_works_queue
from apps.approvals.selectors import (
    DUE_SOON,
    SORTS,
    VIEWS,
    InboxPage,
    InboxQuery,
    absence_list_for_user,
    agreement_rates,
    approval_get_for_user,
    approval_list_for_user,
    inbox_page,
    low_confidence_fields_for,
    new_items_since,
    notification_list_for_user,
    queues_worked_by,
    review_decisions,
    review_fields,
    review_provenance,
    review_sources,
    review_timeline,
    saved_views_for_user,
    source_segments,
    unread_notifications,
)
from apps.approvals.services import (
    absence_for,
    absence_remove,
    absence_set,
    approval_bulk_approve,
    approval_claim,
    approval_decide,
    approval_next,
    approval_reassign,
    approval_release,
    approval_skip,
    bulk_refusal,
    field_changes,
    notifications_mark_read,
    queue_workers,
    saved_view_create,
    saved_view_delete,
)
from apps.core.exceptions import ApplicationError, ValidationFailed
from apps.runs.presentation import Fields, Text, present_value

CONFIDENCE_SOURCES = {
    "logprob": "from the model's token probabilities",
    "agreement": "from agreement between several answers",
    "rule": "from a rule",
    "none": "",
}


def _actor(request: HttpRequest) -> User:
    return request.user  # type: ignore[return-value]


@login_required
def inbox(request: HttpRequest) -> HttpResponse:
    """The inbox: one view of the reviewer's queues, as a bookmarkable URL."""
    return render(request, "approvals/inbox.html", _inbox_context(request, InboxQuery.from_query(request.GET)))


def _inbox_context(request: HttpRequest, query: InboxQuery, **extra: Any) -> dict[str, Any]:
    user = _actor(request)
    page = inbox_page(user, query)
    current = page.query.as_query()
    filtered_queue = next((queue for queue in page.queues if queue.key == page.query.queue), None)
    return {
        "page": page,
        "query": query,
        "views": VIEWS,
        "sorts": SORTS,
        "priorities": ApprovalRequest.Priority.choices,
        "view_links": [(key, label, query.as_query(view=key), page.counts.get(key, 0)) for key, label in VIEWS.items()],
        "previous_page": query.as_query(page=page.query.page - 1) if page.query.page > 1 else None,
        "next_page": query.as_query(page=page.query.page + 1) if page.query.page < page.pages else None,
        "current_query": current,
        "saved_views": [(view, view.query == current) for view in page.saved_views],
        "share_queue": filtered_queue if filtered_queue and user_manages_queue(user, filtered_queue) else None,
        "selectable": _bulk_selectable(user, page) if page.query.view == "unclaimed" else set(),
        "away": absence_for(user),
        "save_errors": {},
        "save_name": "",
        **extra,
    }


def _bulk_selectable(user: User, page: InboxPage) -> set[int]:
    """The listed items `user` may tick for bulk approval: those `bulk_refusal` lets through.

    `bulk_refusal` asks guardian whether she works the item's queue, which is two queries each time; a page of
    rows asks it of the same few queues again and again, so the answers are remembered for this page (on a copy
    of the user, never on the request's): two queries per queue on the page, none per row. Approving asks
    everything afresh."""
    rows = [row.request for row in page.rows if row.request.queue.bulk_threshold is not None]
    if not rows:
        return set()
    answers: dict[tuple[str, str, Any], bool] = {}
    asker = copy.copy(user)
    # The roles read for this request live on the request's lazy user object, which the copy does not carry.
    asker.__dict__["_role_names"] = user_roles(user)

    def has_perm(perm: str, obj: Any = None) -> bool:
        key = (perm, obj._meta.label if obj is not None else "", getattr(obj, "pk", None))
        if key not in answers:
            answers[key] = user.has_perm(perm, obj)
        return answers[key]

    asker.has_perm = has_perm  # type: ignore[method-assign]
    return {item.pk for item in rows if bulk_refusal(asker, item) is None}


@login_required
def inbox_new(request: HttpRequest) -> HttpResponse:
    """The "N new items" bar: how many items arrived after the one the page was rendered with (the same
    fragment the inbox's WebSocket pushes, for clients without it)."""
    try:
        after = int(request.GET.get("after", "0"))
    except ValueError:
        after = 0
    count = new_items_since(request.user, after)
    reload = request.GET.get("q", "")[:1000]
    return render(request, "approvals/_new_items.html", {"count": count, "reload": reload})


@login_required
@require_POST
def next_item(request: HttpRequest) -> HttpResponse:
    """Claim the most urgent item the reviewer may take and open it."""
    claimed = approval_next(actor=_actor(request))
    if claimed is None:
        messages.info(request, "Nothing to take: every item in your queues is claimed or decided.")
        return redirect(reverse("approvals:inbox") + "?" + request.POST.get("back", ""))
    return redirect("approvals:item", request_id=claimed.pk)


def _as_text(kind: str, value: Any) -> str:
    if value is None:
        return ""
    if kind == "json":
        return json.dumps(value, indent=2, ensure_ascii=False)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer() and kind in ("number", "integer"):
        return str(int(value))  # 640.0 reads as 640; parsed back it compares equal, so it is no change
    return str(value)


def _item_context(request: HttpRequest, item: ApprovalRequest, **extra: Any) -> dict[str, Any]:
    user = _actor(request)
    refusal = approval_refusal(user, item) if item.state == ApprovalRequest.State.PENDING else None
    pending = item.state == ApprovalRequest.State.PENDING and item.step_run.state == "waiting"
    mine = item.assignee_id == user.pk
    fields = review_fields(item)
    mine_rate, queue_rate = agreement_rates(user, item.queue) if user_works_queue(user, item.queue) else (None, None)
    posted = extra.get("posted") or {}
    field_errors = extra.get("field_errors") or {}
    rows = []
    for field in fields:
        value = posted.get("edits", {}).get(field.name, field.current)
        rows.append(
            {
                "field": field,
                "value": value,
                "text": _as_text(field.kind, value),
                # A reply or a description: a box that keeps its line breaks (a one-line input drops them).
                "multiline": field.kind == "string"
                and any(
                    "\n" in text or len(text) > 80
                    for text in (_as_text("string", value), _as_text("string", field.proposed))
                ),
                "changed": value != field.proposed,
                "confirmed": field.name in posted.get("confirmed", ()),
                "errors": field_errors.get(field.name, []),
            }
        )
    return {
        "item": item,
        "fields": fields,
        "rows": rows,
        "must_confirm": low_confidence_fields_for(item),
        "segments": source_segments(item.source_text, item.evidence or {}),
        "sla": sla_state(timezone.now(), item.due_at if pending else None, due_soon_within=DUE_SOON),
        "confidence_source": CONFIDENCE_SOURCES.get(item.confidence_source, item.confidence_source),
        "provenance": review_provenance(item),
        "sources": review_sources(item),
        "timeline": review_timeline(item),
        "decisions": review_decisions(item),
        "pending": pending,
        "mine": mine,
        "can_decide": pending and refusal is None and item.assignee_id in (None, user.pk),
        "can_claim": pending and refusal is None and item.assignee_id is None,
        "can_move": pending and (mine or user_manages_queue(user, item.queue)),
        "refusal": refusal if pending else None,
        "reason_codes": item.queue.reason_codes,
        "reviewers": [u for u in queue_workers(item.queue) if u.pk != item.assignee_id] if pending else [],
        "raw": json.dumps(
            {
                "proposal": item.proposal,
                "corrected": item.corrected,
                "confidence": item.confidence,
                "evidence": item.evidence,
            },
            indent=2,
            sort_keys=True,
            default=str,
        ),
        "agreement": (mine_rate, queue_rate),
        **extra,
    }


@login_required
def item_detail(request: HttpRequest, request_id: int) -> HttpResponse:
    """The decision view: the source with its evidence beside the proposal as an editable form."""
    item = approval_get_for_user(request.user, request_id=request_id)
    return render(request, "approvals/item.html", _item_context(request, item))


def _back_to_item(request_id: int) -> HttpResponse:
    return redirect("approvals:item", request_id=request_id)


def _act(request: HttpRequest, request_id: int, act: Any, done: str) -> HttpResponse:
    item = approval_get_for_user(request.user, request_id=request_id)
    try:
        act(item)
    except ApplicationError as refusal:
        text = refusal.message
        if isinstance(refusal, ValidationFailed):
            text += " " + " ".join(message for messages_ in refusal.fields.values() for message in messages_)
        # The refusal's own status (403, 409, 400), with the item as it is now and the reason on it.
        item = approval_get_for_user(request.user, request_id=request_id)
        return render(
            request, "approvals/item.html", _item_context(request, item, form_error=text), status=refusal.status_code
        )
    messages.success(request, done)
    return _back_to_item(request_id)


@login_required
@require_POST
def claim(request: HttpRequest, request_id: int) -> HttpResponse:
    return _act(request, request_id, lambda item: approval_claim(request=item, actor=_actor(request)), "It is yours.")


@login_required
@require_POST
def release(request: HttpRequest, request_id: int) -> HttpResponse:
    return _act(
        request,
        request_id,
        lambda item: approval_release(request=item, actor=_actor(request), reason=request.POST.get("reason", "")),
        "Released: the item is back in its queue.",
    )


@login_required
@require_POST
def skip(request: HttpRequest, request_id: int) -> HttpResponse:
    item = approval_get_for_user(request.user, request_id=request_id)
    try:
        approval_skip(request=item, actor=_actor(request), reason=request.POST.get("reason", ""))
    except ApplicationError as refusal:
        messages.error(request, refusal.message)
        return _back_to_item(request_id)
    messages.success(request, "Skipped: Next item will not offer it to you again.")
    return redirect("approvals:inbox")


@login_required
@require_POST
def reassign(request: HttpRequest, request_id: int) -> HttpResponse:
    raw = request.POST.get("to", "")
    chosen = int(raw) if raw.isascii() and raw.isdigit() else None

    def act(item: ApprovalRequest) -> None:
        # Only the queue's reviewers can be chosen: any other id gets the same answer, naming nobody.
        to = next((person for person in queue_workers(item.queue) if person.pk == chosen), None)
        if to is None:
            raise ValidationFailed(
                "Choose who takes the item.", fields={"to": ["Choose one of the queue's reviewers."]}
            )
        approval_reassign(request=item, actor=_actor(request), to=to, reason=request.POST.get("reason", ""))

    return _act(request, request_id, act, "Reassigned.")


def _edits_from_post(item: ApprovalRequest, post: Any) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The form's values as typed data, by each field's kind; values that do not parse are field errors."""
    edits: dict[str, Any] = {}
    errors: dict[str, list[str]] = {}
    for field in review_fields(item):
        name = f"field-{field.name}"
        if field.kind == "boolean":
            if f"{name}-present" not in post:
                continue
            value: Any = name in post
        elif name not in post:
            continue
        else:
            raw = post.get(name, "")
            try:
                value = _parse(field.kind, raw, field.current)
            except ValueError as error:
                errors[f"edits.{field.name}"] = [str(error)]
                continue
        if value != field.current:
            edits[field.name] = value
    return edits, errors


def _parse(kind: str, raw: str, current: Any) -> Any:
    text = raw.strip()
    if kind == "number":
        if text == "":
            return None
        try:
            number = float(text.replace(",", "")) if "." in text or "e" in text.lower() else _int_or_float(text)
        except ValueError:
            raise ValueError("Enter a number, e.g. 1250.50.") from None
        if not math.isfinite(number):
            raise ValueError("Enter a finite number, e.g. 1250.50.")
        return number
    if kind == "integer":
        if text == "":
            return None
        try:
            return int(text.replace(",", ""))
        except ValueError:
            raise ValueError("Enter a whole number.") from None
    if kind == "json":
        if text == "" and current is None:
            return None
        try:
            value = json.loads(text)
            json.dumps(value, allow_nan=False)
        except json.JSONDecodeError as error:
            raise ValueError(f"Not valid JSON: {error.msg} (line {error.lineno}).") from None
        except ValueError:
            raise ValueError("Numbers must be finite (no NaN or Infinity).") from None
        return value
    if kind == "choice" and text == "" and current is None:
        return None
    # Browsers send a textarea's line breaks as CRLF; the proposal's text has LF, and an untouched reply must
    # not count as a correction.
    return raw.replace("\r\n", "\n")


def _int_or_float(text: str) -> int | float:
    number = float(text.replace(",", ""))
    return int(number) if number.is_integer() else number


@login_required
@require_POST
def decide(request: HttpRequest, request_id: int) -> HttpResponse:
    """Two steps: "Review decision" shows the changes ("you changed 2 of 9 fields") and asks for a reason code;
    "Submit" records the decision. A problem renders the form again with the reviewer's input kept."""
    item = approval_get_for_user(request.user, request_id=request_id)
    decision = request.POST.get("decision", "")
    stage = request.POST.get("stage", "review")
    edits, errors = _edits_from_post(item, request.POST)
    confirmed = request.POST.getlist("confirmed")
    reason = request.POST.get("reason", "")
    reason_code = request.POST.get("reason_code", "")
    try:
        revision = int(request.POST.get("revision", ""))
    except ValueError:
        revision = None
    after = {**(item.corrected or {}), **edits}
    changes = field_changes(item.corrected or {}, after)
    posted = {
        "edits": edits,
        "confirmed": confirmed,
        "reason": reason,
        "reason_code": reason_code,
        "decision": decision,
        "changes": changes,
        "changed_count": len(changes),
        "field_count": len(review_fields(item)),
    }
    if errors:
        return _decision_form_again(request, item, posted, "The decision was not submitted: see the fields.", errors)
    if stage != "submit":
        posted["preview"] = True
        return render(request, "approvals/item.html", _item_context(request, item, posted=posted))
    try:
        approval_decide(
            request=item,
            actor=_actor(request),
            decision=decision,
            reason=reason,
            reason_code=reason_code,
            edits=edits,
            confirmed=confirmed,
            revision=revision,
        )
    except ValidationFailed as refusal:
        return _decision_form_again(request, item, posted, refusal.message, refusal.fields)
    except ApplicationError as refusal:
        messages.error(request, refusal.message)
        return _back_to_item(request_id)
    item.refresh_from_db()
    done = "Approved" if decision == "approved" else "Rejected"
    if item.state == ApprovalRequest.State.PENDING:
        done = "Your approval is recorded; the item went back to its queue for the next person"
    messages.success(request, f"{done}: {item.title} (run #{item.run_id}).")
    if request.POST.get("then") == "next":
        return next_item(request)
    return _back_to_item(request_id)


def _decision_form_again(
    request: HttpRequest, item: ApprovalRequest, posted: dict[str, Any], message: str, errors: dict[str, list[str]]
) -> HttpResponse:
    field_errors = {key.removeprefix("edits."): value for key, value in errors.items()}
    context = _item_context(request, item, posted=posted, form_error=message, field_errors=field_errors)
    return render(request, "approvals/item.html", context, status=400)


# --- bulk approval ------------------------------------------------------------------------------------------


def _inbox_url(query_string: str) -> str:
    clean = InboxQuery.from_query(QueryDict(query_string[:1000])).as_query()
    return reverse("approvals:inbox") + (f"?{clean}" if clean else "")


@login_required
@require_POST
def bulk(request: HttpRequest) -> HttpResponse:
    """Bulk approval in two steps: the ticked items with what would refuse any of them, then "Approve N items",
    all or nothing (approval_bulk_approve). A refused batch shows each item's reason and changes nothing."""
    user = _actor(request)
    back = request.POST.get("back", "")
    ids = [int(value) for value in request.POST.getlist("items") if value.isascii() and value.isdigit()][:200]
    items = sorted(approval_list_for_user(user).filter(pk__in=ids), key=lambda item: ids.index(item.pk))
    if not items:
        messages.error(request, "Tick at least one item to approve in bulk.")
        return redirect(_inbox_url(back))
    comment = request.POST.get("comment", "")
    if request.POST.get("stage") != "approve":
        return render(request, "approvals/bulk.html", _bulk_context(user, items, back=back, comment=comment))
    try:
        approved = approval_bulk_approve(requests=items, actor=user, reason=comment)
    except ValidationFailed as refusal:
        reasons = {int(key): " ".join(why) for key, why in refusal.fields.items() if key.isdigit()}
        context = _bulk_context(user, items, back=back, comment=comment, reasons=reasons, error=refusal.message)
        return render(request, "approvals/bulk.html", context, status=400)
    except ApplicationError as refusal:
        messages.error(request, f"Nothing was approved: {refusal.message}")
        return redirect(_inbox_url(back))
    messages.success(request, f"Approved {len(approved)} item{'s' if len(approved) != 1 else ''}.")
    return redirect(_inbox_url(back))


def _bulk_context(
    user: User,
    items: Sequence[ApprovalRequest],
    *,
    back: str,
    comment: str,
    reasons: dict[int, str] | None = None,
    error: str = "",
) -> dict[str, Any]:
    rows = []
    for item in items:
        why = (reasons or {}).get(item.pk) or bulk_refusal(user, item)
        summary = _fields_summary(item)
        rows.append({"item": item, "refusal": why, "fields": summary})
    return {
        "rows": rows,
        "ready": [row for row in rows if not row["refusal"]],
        "refused": [row for row in rows if row["refusal"]],
        "back": back,
        "back_url": _inbox_url(back),
        "comment": comment,
        "error": error,
    }


def _fields_summary(item: ApprovalRequest) -> list[tuple[str, str]]:
    """The item's data as (label, text) pairs in the schema's designed order, as the run page reads it (12,400;
    No; 3 November 2024), so the rows of a bulk batch line up field for field."""
    shown = present_value(item.corrected or {}, item.schema or None)
    if not isinstance(shown, Fields):
        return []
    return [(row.label, row.value.text if isinstance(row.value, Text) else "(see the item)") for row in shown.rows]


# --- saved views --------------------------------------------------------------------------------------------


@login_required
@require_POST
def view_save(request: HttpRequest) -> HttpResponse:
    """Save the inbox view she is looking at under a name, shared with its queue if she asks (and may)."""
    user = _actor(request)
    query = InboxQuery.from_query(QueryDict(request.POST.get("query", "")[:1000]))
    name = request.POST.get("name", "")
    shared: ApprovalQueue | None = None
    if request.POST.get("share") and query.queue:
        shared = queues_worked_by(user).filter(key=query.queue).first()
    try:
        view = saved_view_create(actor=user, name=name, query=query.as_query(), shared_queue=shared)
    except ValidationFailed as refusal:
        errors = {**refusal.fields}
        if "shared_queue" in errors or "query" in errors:
            errors["name"] = errors.get("name", []) + errors.pop("shared_queue", []) + errors.pop("query", [])
        context = _inbox_context(request, query, save_errors=errors, save_name=name, save_open=True)
        return render(request, "approvals/inbox.html", context, status=400)
    messages.success(request, f'Saved the view "{view.name}"{" for the " + shared.name + " queue" if shared else ""}.')
    return redirect(_inbox_url(view.query))


@login_required
@require_POST
def view_delete(request: HttpRequest, view_id: int) -> HttpResponse:
    user = _actor(request)
    view = next((view for view in saved_views_for_user(user) if view.pk == view_id), None)
    if view is None:
        raise Http404("No such saved view.")
    try:
        saved_view_delete(actor=user, view=view)
    except ApplicationError as refusal:
        messages.error(request, refusal.message)
    else:
        messages.success(request, f'Deleted the saved view "{view.name}".')
    return redirect(_inbox_url(request.POST.get("back", "")))


# --- notifications and the nav's badge ------------------------------------------------------------------------


@login_required
def notifications(request: HttpRequest) -> HttpResponse:
    """Her notifications, newest first; unread ones say "New"."""
    items = notification_list_for_user(request.user)
    unread = sum(1 for item in items if item.read_at is None)
    return render(request, "approvals/notifications.html", {"notifications": items, "unread": unread})


@login_required
@require_POST
def notifications_read(request: HttpRequest) -> HttpResponse:
    marked = notifications_mark_read(user=_actor(request))
    messages.success(request, f"Marked {marked} notification{'s' if marked != 1 else ''} read.")
    return redirect("approvals:notifications")


@require_GET
@never_cache
def badge(request: HttpRequest) -> HttpResponse:
    """The nav's unread count, fetched after the page loads so no page's own queries include it. Nothing
    (204, which htmx leaves unswapped) for someone signed out: never the sign-in page swapped into the nav."""
    if not request.user.is_authenticated:
        return HttpResponse(status=204)
    return render(request, "approvals/_badge.html", {"count": unread_notifications(request.user)})


# --- out of office ------------------------------------------------------------------------------------------

ABSENCE_FIELDS = ("starts_on", "ends_on", "delegate", "note")


def _delegate_choices(user: User) -> list[User]:
    """Active people who work at least one of the queues she works (not herself), by name."""
    people: dict[int, User] = {}
    for queue in queues_worked_by(user).order_by("name"):
        for person in queue_workers(queue):
            if person.pk != user.pk:
                people.setdefault(person.pk, person)
    return sorted(people.values(), key=lambda person: (person.display_name.lower(), person.pk))


def _date(raw: str) -> date | None:
    try:
        return date.fromisoformat(raw)
    except ValueError:
        return None


@login_required
@require_http_methods(["GET", "POST"])
def away(request: HttpRequest) -> HttpResponse:
    """Her current and future absences, and a form to add one: while away, her items go to her delegate."""
    user = _actor(request)
    delegates = _delegate_choices(user)
    form = dict.fromkeys(ABSENCE_FIELDS, "")
    errors: dict[str, list[str]] = {}
    form_error = ""
    if request.method == "POST":
        form = {name: request.POST.get(name, "").strip() for name in ABSENCE_FIELDS}
        starts_on, ends_on = _date(form["starts_on"]), _date(form["ends_on"])
        delegate = next((person for person in delegates if str(person.pk) == form["delegate"]), None)
        for name, value in (("starts_on", starts_on), ("ends_on", ends_on)):
            if value is None:
                errors[name] = ["Enter a date, for example 2027-03-14."]
        if delegate is None:
            errors["delegate"] = ["Choose who takes your items while you are away."]
        if starts_on and ends_on and delegate and not errors:
            try:
                absence = absence_set(
                    actor=user, starts_on=starts_on, ends_on=ends_on, delegate=delegate, note=form["note"]
                )
            except ValidationFailed as refusal:
                errors, form_error = refusal.fields, refusal.message
            else:
                messages.success(
                    request,
                    f"Saved: from {absence.starts_on:%-d %b %Y} to {absence.ends_on:%-d %b %Y} "
                    f"your new items go to {delegate.display_name}.",
                )
                return redirect("approvals:away")
        form_error = form_error or "The absence was not saved: see the fields below."
    context = {
        "absences": absence_list_for_user(user),
        "today": timezone.localdate(),
        "delegates": delegates,
        "form": form,
        "errors": errors,
        "form_error": form_error,
    }
    return render(request, "approvals/away.html", context, status=400 if errors else 200)


@login_required
@require_POST
def away_remove(request: HttpRequest, absence_id: int) -> HttpResponse:
    user = _actor(request)
    absence = get_object_or_404(OutOfOffice.objects.filter(user_id=user.pk), pk=absence_id)
    absence_remove(actor=user, absence=absence)
    messages.success(request, f"Removed the absence from {absence.starts_on:%-d %b %Y} to {absence.ends_on:%-d %b %Y}.")
    return redirect("approvals:away")
