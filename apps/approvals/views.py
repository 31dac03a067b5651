"""The reviewer's pages: the inbox (views, filters, Next item) and the decision view of one item, with its
claim, release, skip, reassign and decide actions. Every write goes through apps.approvals.services."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from apps.accounts.models import User
from apps.approvals.calendar import sla_state
from apps.approvals.models import ApprovalRequest
from apps.approvals.selectors import (
    DUE_SOON,
    SORTS,
    VIEWS,
    InboxQuery,
    agreement_rates,
    approval_get_for_user,
    inbox_page,
    low_confidence_fields_for,
    new_items_since,
    review_decisions,
    review_fields,
    review_provenance,
    review_timeline,
    source_segments,
)
from apps.approvals.services import (
    approval_claim,
    approval_decide,
    approval_next,
    approval_reassign,
    approval_refusal,
    approval_release,
    approval_skip,
    field_changes,
    queue_workers,
    user_manages_queue,
    user_works_queue,
)
from apps.core.exceptions import ApplicationError, ValidationFailed

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
    query = InboxQuery.from_query(request.GET)
    page = inbox_page(request.user, query)
    context = {
        "page": page,
        "query": query,
        "views": VIEWS,
        "sorts": SORTS,
        "priorities": ApprovalRequest.Priority.choices,
        "view_links": [(key, label, query.as_query(view=key), page.counts.get(key, 0)) for key, label in VIEWS.items()],
        "previous_page": query.as_query(page=page.query.page - 1) if page.query.page > 1 else None,
        "next_page": query.as_query(page=page.query.page + 1) if page.query.page < page.pages else None,
    }
    return render(request, "approvals/inbox.html", context)


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
        messages.error(request, text)
        return _back_to_item(request_id)
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
    to = User.objects.filter(pk=request.POST.get("to") or 0, is_active=True).first()

    def act(item: ApprovalRequest) -> None:
        if to is None:
            raise ValidationFailed("Choose who takes the item.", fields={"to": ["Choose a reviewer."]})
        approval_reassign(request=item, actor=_actor(request), to=to, reason=request.POST.get("reason", ""))

    return _act(request, request_id, act, f"Reassigned to {to.display_name if to else ''}.")


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
            return float(text.replace(",", "")) if "." in text or "e" in text.lower() else _int_or_float(text)
        except ValueError:
            raise ValueError("Enter a number, e.g. 1250.50.") from None
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
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"Not valid JSON: {error.msg} (line {error.lineno}).") from None
    if kind == "choice" and text == "" and current is None:
        return None
    return raw


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
