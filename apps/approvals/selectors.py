"""Permission-aware reads of approval queues and items: the inbox's views, counts and the decision view.

A person sees an item when she works its queue, or may view the run behind it (its workflow's owner and team,
managers, admins). She works a queue when she holds the reviewer or admin role and the queue's work
permission (apps.approvals.models); a queue she does not work is invisible to her, and so is its item: 404.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django.contrib.auth.models import AbstractUser, AnonymousUser
from django.db.models import Count, Exists, F, OuterRef, Q, QuerySet
from django.http import Http404, QueryDict
from django.utils import timezone

from apps.accounts.roles import ADMIN, REVIEWER, user_roles
from apps.approvals.calendar import SlaState, sla_state
from apps.approvals.models import (
    ApprovalActivity,
    ApprovalDecision,
    ApprovalQueue,
    ApprovalRequest,
    Notification,
    OutOfOffice,
    SavedView,
)
from apps.approvals.rules import approval_refusal
from apps.core.permissions import restrict
from apps.inference.models import InferenceCall
from apps.runs.models import StepRun
from apps.runs.selectors import run_list_for_user

AnyUser = AbstractUser | AnonymousUser

# Confidence bands, as text and never colour alone (a starting point; the analyst sees calibrated figures).
BANDS = ((0.9, "high"), (0.7, "medium"), (0.0, "low"))
DUE_SOON = timedelta(hours=1)
PAGE_SIZE = 25
VIEWS = {
    "mine": "My items",
    "unclaimed": "Unclaimed in my queues",
    "due_soon": "Due soon",
    "breached": "Breached",
    "done": "Done by me",
}
SORTS = {
    "urgency": "Most urgent first",
    "due": "Due first",
    "oldest": "Oldest first",
    "newest": "Newest first",
    "confidence": "Lowest confidence first",
}


def band(score: float | None) -> str:
    """ "high", "medium" or "low" for a confidence score; "" when there is none."""
    if score is None:
        return ""
    return next(name for floor, name in BANDS if score >= floor)


def queues_worked_by(user: AnyUser) -> QuerySet[ApprovalQueue]:
    """The queues whose items `user` may work: all of them for admins, those she holds the work permission on
    for reviewers, none for anyone else."""
    if not user.is_authenticated or not user.is_active:
        return ApprovalQueue.objects.none()
    roles = user_roles(user)
    if user.is_superuser or ADMIN in roles:
        return ApprovalQueue.objects.all()
    if REVIEWER not in roles:
        return ApprovalQueue.objects.none()
    return restrict(ApprovalQueue.objects.all(), user, "approvals.work_approvalqueue")


def worked_queue_ids(user: AnyUser) -> list[int]:
    """The ids of the queues `user` works, read once per user object (one request's worth). Queries filter
    on this list rather than on a permission subquery: with the ids known, PostgreSQL walks the inbox's
    index in order instead of joining and sorting every pending item (bench/README.md, B10)."""
    if not user.is_authenticated:
        return []
    cached: list[int] | None = user.__dict__.get("_worked_queue_ids")
    if cached is None:
        cached = list(queues_worked_by(user).order_by("pk").values_list("pk", flat=True))
        user.__dict__["_worked_queue_ids"] = cached
    return cached


def queues_usable_by(user: AnyUser) -> QuerySet[ApprovalQueue]:
    """The queues `user` may name in an approval step: those she holds the use permission on (admins: all)."""
    if not user.is_authenticated or not user.is_active:
        return ApprovalQueue.objects.none()
    if user.is_superuser or ADMIN in user_roles(user):
        return ApprovalQueue.objects.all()
    return restrict(ApprovalQueue.objects.all(), user, "approvals.use_approvalqueue")


def queue_list_for_user(user: AnyUser) -> QuerySet[ApprovalQueue]:
    """The queues `user` may see: those she works or may use, and those she leads."""
    if not user.is_authenticated:
        return ApprovalQueue.objects.none()
    return (
        ApprovalQueue.objects.filter(
            Q(pk__in=worked_queue_ids(user)) | Q(pk__in=queues_usable_by(user).values("pk")) | Q(lead_id=user.pk)
        )
        .select_related("team", "lead")
        .order_by("name", "pk")
    )


def queue_choices_for(user: AnyUser) -> list[tuple[str, str]]:
    """The builder's options for an approval step's queue: the queues `user` may name, by name."""
    if user is None:
        return []
    return [
        (key, f"{name} ({key})") for key, name in queues_usable_by(user).order_by("name").values_list("key", "name")
    ]


def queue_get_for_user(user: AnyUser, *, key: str) -> ApprovalQueue:
    queue = queue_list_for_user(user).filter(key=key).first()
    if queue is None:
        raise Http404("No such queue.")
    return queue


def queue_key_problem(key: str) -> str | None:
    """The publish-time check of an approval step's queue (the step library's hook)."""
    if not ApprovalQueue.objects.filter(key=key).exists():
        return f'approval queue "{key}" does not exist'
    return None


def queue_use_problems(user: AnyUser, graph: dict[str, Any]) -> list[str]:
    """The publish check (the workflows app's hook): every queue an approval step names, first or later, is
    one the publisher may use. Without it, anyone could route her runs into another team's queue, and that
    team's reviewers would read her runs."""
    usable = set(queues_usable_by(user).values_list("key", flat=True))
    problems = []
    for step in graph.get("steps", []):
        if not isinstance(step, dict) or step.get("type") not in ("human.approval", "llm.agent"):
            continue
        config = step.get("config")
        if not isinstance(config, dict):
            continue
        if step.get("type") == "human.approval":
            named = [config.get("queue"), *(config.get("then_queues") or [])]
        else:  # an agent's tools that ask a person first, and the queue that reviews after a suspicious output
            tools: list[Any] = config["tools"] if isinstance(config.get("tools"), list) else []
            named = [config.get("review_queue")] + [
                tool.get("approval_queue") for tool in tools if isinstance(tool, dict) and tool.get("approval") == "ask"
            ]
        for key in named:
            if isinstance(key, str) and key and key not in usable and ApprovalQueue.objects.filter(key=key).exists():
                problems.append(f'step "{step.get("key")}": you may not send items to the approval queue "{key}"')
    return problems


def runs_visible_through_queues(user: AnyUser) -> Any:
    """The runs behind the items of the queues `user` works (the runs app's visibility hook): she reads them,
    she does not operate them."""
    return ApprovalRequest.objects.filter(queue__in=worked_queue_ids(user)).values("run_id")


def approval_list_for_user(user: AnyUser) -> QuerySet[ApprovalRequest]:
    """Items `user` may see: in queues she works, or on runs she may view; oldest first."""
    if not user.is_authenticated:
        return ApprovalRequest.objects.none()
    worked = worked_queue_ids(user)
    # The runs she may view in her own right: reading a run because of one queue's item must not open the
    # items of other queues on the same run.
    visible_runs = run_list_for_user(user, through_other_apps=False).values("pk")
    return (
        ApprovalRequest.objects.filter(Q(queue__in=worked) | Q(run__in=visible_runs))
        .select_related("run", "run__workflow", "decided_by", "step_run", "queue", "assignee")
        .order_by("created_at", "pk")
    )


def approval_get_for_user(user: AnyUser, *, request_id: int) -> ApprovalRequest:
    request = approval_list_for_user(user).filter(pk=request_id).first()
    if request is None:
        raise Http404("No such approval request.")
    return request


# --- the inbox ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InboxQuery:
    """An inbox view with its filters and sort, read from (and written back to) a query string, so every
    view is a URL that can be bookmarked, saved or shared."""

    view: str = "unclaimed"
    queue: str = ""
    workflow: str = ""
    priority: str = ""
    due: str = ""
    confidence: str = ""
    sort: str = "urgency"
    page: int = 1

    @classmethod
    def from_query(cls, query: QueryDict | dict[str, str]) -> InboxQuery:
        def pick(name: str, allowed: Any, default: str = "") -> str:
            value = str(query.get(name, default) or default)
            return value if value in allowed else default

        try:
            page = max(1, min(int(query.get("page", 1) or 1), 10_000))
        except (TypeError, ValueError):
            page = 1
        return cls(
            view=pick("view", VIEWS, "unclaimed"),
            queue=str(query.get("queue", "") or "")[:150],
            workflow=str(query.get("workflow", "") or "")[:100],
            priority=pick("priority", {str(p.value) for p in ApprovalRequest.Priority}),
            due=pick("due", {"overdue", "today", "week", "none"}),
            confidence=pick("confidence", {"low", "medium", "high", "none"}),
            sort=pick("sort", SORTS, "urgency"),
            page=page,
        )

    def as_query(self, **changes: Any) -> str:
        """This query string with `changes`, leaving out defaults (and the page, unless it is changed)."""
        values = {**self.__dict__, "page": 1, **changes}
        defaults = InboxQuery().__dict__
        return urlencode({k: v for k, v in values.items() if v != defaults[k] and v != ""})

    @property
    def filtered(self) -> bool:
        return any((self.queue, self.workflow, self.priority, self.due, self.confidence))


@dataclass
class InboxRow:
    request: ApprovalRequest
    sla: SlaState
    band: str
    low_fields: int


@dataclass
class InboxPage:
    query: InboxQuery
    rows: list[InboxRow]
    counts: dict[str, int]
    total: int
    pages: int
    queues: list[ApprovalQueue]
    workflows: list[tuple[str, str]]
    newest_id: int
    saved_views: list[SavedView] = field(default_factory=list)


def _view_queryset(user: AnyUser, view: str, now: datetime) -> QuerySet[ApprovalRequest]:
    base = ApprovalRequest.objects.all()
    if view == "done":
        return base.filter(pk__in=ApprovalDecision.objects.filter(actor_id=user.pk).values("request_id"))
    worked = worked_queue_ids(user)
    pending = base.filter(state=ApprovalRequest.State.PENDING, step_run__state=StepRun.State.WAITING, queue__in=worked)
    if view == "mine":
        return pending.filter(assignee_id=user.pk)
    mine_or_free = pending.filter(Q(assignee_id=user.pk) | Q(assignee__isnull=True))
    if view == "unclaimed":
        return (
            pending.filter(assignee__isnull=True)
            .exclude(Q(separation_of_duties=True, initiators__contains=[user.pk]))
            .exclude(decisions__actor_id=user.pk)
        )
    if view == "due_soon":
        return mine_or_free.filter(due_at__gte=now, due_at__lt=now + DUE_SOON)
    return pending.filter(due_at__lt=now)  # breached: whoever holds it, the queue should know


def inbox_counts(user: AnyUser, *, now: datetime | None = None) -> dict[str, int]:
    """How many items each view holds: four counts in one query, and one for "done by me"."""
    now = now or timezone.now()
    worked = worked_queue_ids(user)
    pending = ApprovalRequest.objects.filter(
        state=ApprovalRequest.State.PENDING, step_run__state=StepRun.State.WAITING, queue__in=worked
    )
    decided = ApprovalDecision.objects.filter(request=OuterRef("pk"), actor_id=user.pk)
    unclaimed = (
        Q(assignee__isnull=True) & ~Q(separation_of_duties=True, initiators__contains=[user.pk]) & ~Exists(decided)
    )
    counts = pending.aggregate(
        mine=Count("pk", filter=Q(assignee_id=user.pk)),
        unclaimed=Count("pk", filter=unclaimed),
        due_soon=Count(
            "pk",
            filter=(Q(assignee_id=user.pk) | Q(assignee__isnull=True)) & Q(due_at__gte=now, due_at__lt=now + DUE_SOON),
        ),
        breached=Count("pk", filter=Q(due_at__lt=now)),
    )
    counts["done"] = ApprovalDecision.objects.filter(actor_id=user.pk).count()
    return counts


def inbox_items(user: AnyUser, query: InboxQuery, *, now: datetime | None = None) -> QuerySet[ApprovalRequest]:
    """Every item of an inbox view, filtered and sorted as the query says (the id breaks ties): the inbox page
    shows PAGE_SIZE of them at a time, the API a page of `limit`."""
    now = now or timezone.now()
    items = _view_queryset(user, query.view, now)
    if query.queue:
        items = items.filter(queue__key=query.queue)
    if query.workflow:
        items = items.filter(run__workflow__slug=query.workflow)
    if query.priority:
        items = items.filter(priority=int(query.priority))
    if query.due == "overdue":
        items = items.filter(due_at__lt=now)
    elif query.due == "today":
        end = timezone.localtime(now).replace(hour=23, minute=59, second=59)
        items = items.filter(due_at__lte=end)
    elif query.due == "week":
        items = items.filter(due_at__lte=now + timedelta(days=7))
    elif query.due == "none":
        items = items.filter(due_at__isnull=True)
    if query.confidence == "none":
        items = items.filter(min_confidence__isnull=True)
    elif query.confidence:
        bounds = {"high": (0.9, None), "medium": (0.7, 0.9), "low": (None, 0.7)}[query.confidence]
        if bounds[0] is not None:
            items = items.filter(min_confidence__gte=bounds[0])
        if bounds[1] is not None:
            items = items.filter(min_confidence__lt=bounds[1])
    orders: dict[str, list[Any]] = {
        "urgency": [F("priority").desc(), F("due_at").asc(nulls_last=True), "created_at", "pk"],
        "due": [F("due_at").asc(nulls_last=True), "created_at", "pk"],
        "oldest": ["created_at", "pk"],
        "newest": ["-created_at", "-pk"],
        "confidence": [F("min_confidence").asc(nulls_last=True), "created_at", "pk"],
    }
    order = orders[query.sort]
    if query.view == "done" and query.sort == "urgency":
        order = [F("decided_at").desc(nulls_last=True), "-pk"]
    return items.select_related("run", "run__workflow", "queue", "assignee", "decided_by").order_by(*order)


def inbox_page(user: AnyUser, query: InboxQuery, *, now: datetime | None = None) -> InboxPage:
    """One page of an inbox view, with every view's count, the filters' choices and the newest item's id
    (the live bar counts items newer than that)."""
    now = now or timezone.now()
    items = inbox_items(user, query, now=now)
    total = items.count()
    pages = max(1, -(-total // PAGE_SIZE))
    page = min(query.page, pages)
    rows = list(items[(page - 1) * PAGE_SIZE : page * PAGE_SIZE])
    worked = list(ApprovalQueue.objects.filter(pk__in=worked_queue_ids(user)).order_by("name"))
    workflows = sorted(
        {
            (slug, name)
            for slug, name in ApprovalRequest.objects.filter(
                queue__in=[q.pk for q in worked], state=ApprovalRequest.State.PENDING
            )
            .values_list("run__workflow__slug", "run__workflow__name")
            .order_by()  # without it, the model's ordering joins the DISTINCT: one row per item, not per workflow
            .distinct()
        },
        key=lambda pair: pair[1],
    )
    newest = (
        ApprovalRequest.objects.filter(queue__in=[q.pk for q in worked])
        .order_by("-pk")
        .values_list("pk", flat=True)
        .first()
    )
    return InboxPage(
        query=InboxQuery(**{**query.__dict__, "page": page}),
        rows=[
            InboxRow(
                request=row,
                sla=sla_state(
                    now, row.due_at if row.state == ApprovalRequest.State.PENDING else None, due_soon_within=DUE_SOON
                ),
                band=band(row.min_confidence),
                low_fields=sum(1 for score in row.confidence.values() if score < row.queue.confirm_below),
            )
            for row in rows
        ],
        counts=inbox_counts(user, now=now),
        total=total,
        pages=pages,
        queues=worked,
        workflows=workflows,
        newest_id=newest or 0,
        saved_views=saved_views_for_user(user),
    )


def new_items_since(user: AnyUser, after_id: int) -> int:
    """How many items arrived in `user`'s queues after item `after_id` (the live "3 new items" bar)."""
    return ApprovalRequest.objects.filter(
        pk__gt=after_id,
        queue__in=worked_queue_ids(user),
        state=ApprovalRequest.State.PENDING,
    ).count()


def saved_views_for_user(user: AnyUser) -> list[SavedView]:
    """Her own saved views, and those shared with a queue she works."""
    if not user.is_authenticated:
        return []
    return list(
        SavedView.objects.filter(Q(owner_id=user.pk) | Q(shared_queue__in=worked_queue_ids(user)))
        .select_related("shared_queue", "owner")
        .order_by("name", "pk")
    )


def unread_notifications(user: AnyUser) -> int:
    """The badge: how many notifications `user` has not read."""
    if not user.is_authenticated:
        return 0
    return Notification.objects.filter(user_id=user.pk, read_at__isnull=True).count()


def notifications_for_user(user: AnyUser) -> QuerySet[Notification]:
    """The user's own notifications, newest first (the id breaks ties, so pages never repeat or skip one)."""
    if not user.is_authenticated:
        return Notification.objects.none()
    return Notification.objects.filter(user_id=user.pk).select_related("request").order_by("-created_at", "-pk")


def notification_list_for_user(user: AnyUser, *, limit: int = 50) -> list[Notification]:
    return list(notifications_for_user(user)[:limit])


def absences_for_user(user: AnyUser) -> QuerySet[OutOfOffice]:
    """The user's own absences that have not ended, soonest first (the id breaks ties)."""
    if not user.is_authenticated:
        return OutOfOffice.objects.none()
    today = timezone.localdate()
    return (
        OutOfOffice.objects.filter(user_id=user.pk, ends_on__gte=today)
        .select_related("delegate")
        .order_by("starts_on", "pk")
    )


def absence_list_for_user(user: AnyUser) -> list[OutOfOffice]:
    return list(absences_for_user(user))


# --- the decision view ----------------------------------------------------------------------------------------


@dataclass
class ReviewField:
    """One field of the proposal as the reviewer sees it."""

    name: str
    label: str
    kind: str  # "string", "number", "integer", "boolean", "choice", "json"
    proposed: Any
    current: Any
    confidence: float | None
    band: str
    must_confirm: bool
    evidence: dict[str, Any] | None
    choices: list[Any] = field(default_factory=list)
    required: bool = False
    description: str = ""

    @property
    def changed(self) -> bool:
        return self.current != self.proposed


@dataclass
class SourceSegment:
    text: str
    field: str = ""  # the field this segment is the evidence of


def low_confidence_fields_for(request: ApprovalRequest) -> list[str]:
    """The fields a reviewer must confirm or correct before approving, lowest confidence first."""
    threshold = request.queue.confirm_below
    return [name for _, name in sorted((s, n) for n, s in request.confidence.items() if s < threshold)]


def _kind_of(value: Any) -> str:
    """The review field kind of a value that no schema describes."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return "string" if isinstance(value, str) else "json"


def review_fields(request: ApprovalRequest) -> list[ReviewField]:
    """The proposal's fields, lowest confidence first (those to confirm lead), then in the schema's order."""
    schema = request.schema or {}
    properties = schema.get("properties", {}) if isinstance(schema, dict) else {}
    required = set(schema.get("required", [])) if isinstance(schema, dict) else set()
    order = list(schema.get("x-order", [])) if isinstance(schema.get("x-order"), list) else []
    names = [n for n in order if n in properties] + [n for n in properties if n not in order]
    names += [n for n in (request.proposal or {}) if n not in names]
    threshold = request.queue.confirm_below
    fields = []
    for position, name in enumerate(names):
        spec = properties.get(name, {}) if isinstance(properties.get(name), dict) else {}
        kind = spec.get("type") if isinstance(spec.get("type"), str) else ""
        if spec.get("enum"):
            kind = "choice"
        elif not spec:
            # Data the workflow passed without a schema (an approval step's inputs): edited as what it is, so a
            # drafted reply is text to read and correct, not a JSON string with escaped line breaks.
            kind = _kind_of((request.proposal or {}).get(name))
        elif kind not in ("string", "number", "integer", "boolean"):
            kind = "json"
        score = request.confidence.get(name)
        fields.append(
            (
                (0 if score is not None and score < threshold else 1, score if score is not None else 2, position),
                ReviewField(
                    name=name,
                    label=str(spec.get("title") or name.replace("_", " ").capitalize()),
                    kind=kind,
                    proposed=(request.proposal or {}).get(name),
                    current=(request.corrected or {}).get(name),
                    confidence=score,
                    band=band(score),
                    must_confirm=score is not None and score < threshold,
                    evidence=request.evidence.get(name) if isinstance(request.evidence.get(name), dict) else None,
                    choices=list(spec.get("enum") or []),
                    required=name in required,
                    description=str(spec.get("description") or ""),
                ),
            )
        )
    return [item for _, item in sorted(fields, key=lambda pair: pair[0])]


def source_segments(text: str, evidence: dict[str, Any]) -> list[SourceSegment]:
    """`text` cut into plain and evidence segments (overlaps resolved in favour of the earlier span), so the
    template can mark each field's evidence without any markup inside the text."""
    spans = []
    for name, item in evidence.items():
        if not isinstance(item, dict):
            continue
        start, end = item.get("start"), item.get("end")
        if isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(text):
            spans.append((start, end, name))
    segments, position = [], 0
    for start, end, name in sorted(spans):
        if start < position:
            continue
        if start > position:
            segments.append(SourceSegment(text[position:start]))
        segments.append(SourceSegment(text[start:end], name))
        position = end
    if position < len(text):
        segments.append(SourceSegment(text[position:]))
    return segments


def review_provenance(request: ApprovalRequest) -> list[InferenceCall]:
    """The model calls behind the reviewed step of this item's run (every attempt, in order)."""
    if not request.review_step_key:
        return []
    return list(
        InferenceCall.objects.filter(run_id=request.run_id, step_key=request.review_step_key)
        .select_related("endpoint")
        .order_by("pk")
    )


@dataclass(frozen=True)
class ReviewSources:
    """What one knowledge retrieval of the item's run found: the sources a drafted answer rests on."""

    step_key: str
    query: str
    mode: str
    passages: list[dict[str, Any]]


def review_sources(request: ApprovalRequest) -> list[ReviewSources]:
    """The passages every finished knowledge retrieval (rag.retrieve) of this item's run found, in step order,
    so the reviewer checks a drafted answer against what it was drafted from."""
    rows = StepRun.objects.filter(
        run_id=request.run_id, step_type="rag.retrieve", state=StepRun.State.SUCCEEDED
    ).order_by("pk")
    found = []
    for step_key, usage in rows.values_list("step_key", "usage"):
        usage = usage or {}
        retrieval = usage.get("retrieval") or {}
        found.append(
            ReviewSources(
                step_key=step_key,
                query=str(retrieval.get("query", "")),
                mode=str(retrieval.get("mode", "")),
                passages=list(usage.get("sources") or []),
            )
        )
    return found


def review_timeline(request: ApprovalRequest) -> list[ApprovalActivity]:
    return list(request.activities.select_related("actor").order_by("created_at", "pk"))


def review_decisions(request: ApprovalRequest) -> list[ApprovalDecision]:
    return list(request.decisions.select_related("actor").order_by("created_at", "pk"))


def agreement_rates(user: AnyUser, queue: ApprovalQueue) -> tuple[float | None, float | None]:
    """(her rate, the queue's rate) of approvals that changed nothing: the reviewer's own agreement with the
    model beside her queue's, so rubber-stamping shows."""

    def rate(decisions: QuerySet[ApprovalDecision]) -> float | None:
        totals = decisions.filter(decision="approved").aggregate(
            n=Count("pk"), unchanged=Count("pk", filter=Q(changes=[]))
        )
        return totals["unchanged"] / totals["n"] if totals["n"] else None

    in_queue = ApprovalDecision.objects.filter(request__queue=queue)
    return rate(in_queue.filter(actor_id=user.pk)), rate(in_queue)


def approval_step_notes(user: AnyUser, run: Any, steps: list[StepRun]) -> dict[int, dict[str, str]]:
    """The run page's note on each approval step (the runs app's hook): the item's state, who holds it and
    its due time, with "Decide" for someone who may decide it now and "Open the item" for anyone else who
    may see it. One query whatever the steps (more for a reviewer, whose right to decide is checked)."""
    from django.urls import reverse

    # Whoever sees the run page may see the run's items (approval_list_for_user includes every run she may view).
    items = ApprovalRequest.objects.filter(run=run).select_related("queue", "assignee", "decided_by", "run")
    now = timezone.now()
    notes = {}
    for item in items:
        if item.state == ApprovalRequest.State.PENDING:
            holder = item.assignee.display_name if item.assignee else "unclaimed"
            sla = sla_state(now, item.due_at, due_soon_within=DUE_SOON)
            text = f"In the {item.queue.name} queue, {holder}; {sla.label.lower()}."
            if item.required_approvals > 1:
                text += f" {item.approvals_count} of {item.required_approvals} approvals."
            may_decide = (
                user.is_authenticated
                and approval_refusal(user, item) is None  # type: ignore[arg-type]
                and item.assignee_id in (None, user.pk)
            )
            label = "Decide" if may_decide else "Open the item"
        else:
            who = f" by {item.decided_by.display_name}" if item.decided_by else ""
            text = f"{item.get_state_display()}{who} in the {item.queue.name} queue."
            may_decide, label = False, "Open the item"
        notes[item.step_run_id] = {
            "text": text,
            "link": reverse("approvals:item", args=[item.pk]),
            "link_label": label,
            "primary": "1" if may_decide else "",
        }
    return notes
