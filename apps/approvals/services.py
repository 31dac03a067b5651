"""Approval queues, and the life of an item in one: opened by the engine, claimed, released, reassigned,
skipped, delegated, decided under the queue's policy, escalated, expired or cancelled with its run.

Locks follow the engine's rule (apps/runs/lifecycle.py): the run first, then its approval rows. Every change
is audited in the run's stream, in the same transaction.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable, Sequence
from datetime import date, datetime, timedelta
from typing import Any

import jsonschema
from django.contrib.auth.models import Group
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, F, Max, QuerySet
from django.db.models.fields.json import KT
from django.db.models.functions import Coalesce
from django.utils import timezone
from guardian.shortcuts import assign_perm, get_users_with_perms

from apps.accounts.models import Team, User
from apps.accounts.roles import ADMIN, REVIEWER
from apps.approvals.calendar import ALWAYS, BusinessCalendar, escalation_times
from apps.approvals.events import publish_item_arrived
from apps.approvals.models import (
    ApprovalActivity,
    ApprovalDecision,
    ApprovalQueue,
    ApprovalRequest,
    Assignment,
    DecisionPolicy,
    EscalationTimer,
    Notification,
    OutOfOffice,
    SavedView,
)
from apps.approvals.rules import (
    USE,
    WORK,
    _has_role,
    approval_refusal,
    run_initiator_ids,
    user_manages_queue,
)
from apps.approvals.selectors import low_confidence_fields_for
from apps.audit.services import audit_record
from apps.core.exceptions import Conflict, Forbidden, ValidationFailed
from apps.runs.faults import crash_point
from apps.runs.lifecycle import output_digest, run_lock, run_try_lock, step_run_resume
from apps.runs.models import Run, StepRun
from apps.steps.base import Wait
from apps.steps.guardrails import held_review_proposal, held_review_title
from apps.steps.library.human import ApprovalConfig

logger = logging.getLogger(__name__)

DECISIONS = (ApprovalRequest.State.APPROVED, ApprovalRequest.State.REJECTED)
ESCALATION_ACTIONS = {choice.value for choice in EscalationTimer.Action}
# "Next item" reads this many of the most urgent candidates at a time, and reads again up to NEXT_ROUNDS times
# when other reviewers took them all first.
NEXT_CANDIDATES = 20
NEXT_ROUNDS = 10

QUEUE_KEY = re.compile(r"[A-Za-z0-9:_-]+")


# --- who may do what --------------------------------------------------------------------------------------


# --- queues -----------------------------------------------------------------------------------------------

QUEUE_FIELDS = (
    "name",
    "description",
    "calendar",
    "sla_hours",
    "escalation",
    "policy",
    "required_approvals",
    "separation_of_duties",
    "confirm_below",
    "bulk_threshold",
    "audit_sample_rate",
    "assignment",
    "reason_codes",
)


def queue_settings_clean(data: dict[str, Any]) -> dict[str, Any]:
    """Queue settings checked and normalised; ValidationFailed naming every field that is wrong."""
    errors: dict[str, list[str]] = {}
    clean: dict[str, Any] = {}

    def fraction(name: str, value: Any, *, allow_none: bool = False) -> None:
        if value is None and allow_none:
            clean[name] = None
            return
        try:
            number = float(value)
        except (TypeError, ValueError):
            errors[name] = ["Enter a number between 0 and 1."]
            return
        if not 0 <= number <= 1:
            errors[name] = ["Enter a number between 0 and 1."]
        clean[name] = number

    for name, value in data.items():
        if name not in QUEUE_FIELDS:
            errors[name] = ["Unknown setting."]
        elif name == "name":
            if not isinstance(value, str) or not value.strip() or len(value) > 150:
                errors[name] = ["Give the queue a name of at most 150 characters."]
            else:
                clean[name] = value.strip()
        elif name == "description":
            clean[name] = str(value or "")[:5000]
        elif name == "calendar":
            try:
                clean[name] = BusinessCalendar.from_dict(value).to_dict() if value else {}
            except (ValueError, TypeError) as error:
                errors[name] = [str(error)]
        elif name == "sla_hours":
            if value in (None, ""):
                clean[name] = None
            else:
                try:
                    hours = float(value)
                except (TypeError, ValueError):
                    hours = -1
                if not 0 < hours <= 24 * 365:
                    errors[name] = ["Enter business hours greater than 0, or leave it empty for no due time."]
                else:
                    clean[name] = hours
        elif name == "escalation":
            steps, problems = _escalation_clean(value)
            if problems:
                errors[name] = problems
            clean[name] = steps
        elif name == "policy":
            if value not in DecisionPolicy.values:
                errors[name] = [f"Choose one of: {', '.join(DecisionPolicy.values)}."]
            clean[name] = value
        elif name == "required_approvals":
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 20:
                errors[name] = ["Enter a whole number from 1 to 20."]
            clean[name] = value
        elif name == "separation_of_duties":
            clean[name] = bool(value)
        elif name in ("confirm_below", "audit_sample_rate"):
            fraction(name, value)
        elif name == "bulk_threshold":
            fraction(name, None if value in (None, "") else value, allow_none=True)
        elif name == "assignment":
            if value not in Assignment.values:
                errors[name] = [f"Choose one of: {', '.join(Assignment.values)}."]
            clean[name] = value
        elif name == "reason_codes":
            codes, problems = _reason_codes_clean(value)
            if problems:
                errors[name] = problems
            clean[name] = codes
    if errors:
        raise ValidationFailed("Some queue settings are not valid.", fields=errors)
    return clean


def _escalation_clean(value: Any) -> tuple[list[dict[str, Any]], list[str]]:
    if not isinstance(value, list):
        return [], ["A list of steps, each with a fraction of the due time and an action."]
    steps, problems = [], []
    for index, step in enumerate(value, start=1):
        if not isinstance(step, dict):
            problems.append(f"Step {index}: needs a fraction and an action.")
            continue
        try:
            at = float(step.get("at"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            at = -1
        if not 0 < at <= 3:
            problems.append(f"Step {index}: the fraction of the due time must be above 0 and at most 3 (300 %).")
        if step.get("action") not in ESCALATION_ACTIONS:
            problems.append(f"Step {index}: the action must be one of {', '.join(sorted(ESCALATION_ACTIONS))}.")
        steps.append({"at": at, "action": step.get("action")})
    if len(steps) > 10:
        problems.append("At most 10 escalation steps.")
    return sorted(steps, key=lambda step: step["at"]), problems


def _reason_codes_clean(value: Any) -> tuple[list[dict[str, str]], list[str]]:
    if not isinstance(value, list):
        return [], ["A list of reason codes, each with a code and a label."]
    codes, problems, seen = [], [], set()
    for index, item in enumerate(value, start=1):
        code = str((item or {}).get("code", "")).strip() if isinstance(item, dict) else ""
        label = str((item or {}).get("label", "")).strip() if isinstance(item, dict) else ""
        if not code or not code.replace("_", "").replace("-", "").isalnum() or len(code) > 64:
            problems.append(f"Code {index}: use letters, digits, - and _ (at most 64).")
            continue
        if code in seen:
            problems.append(f'Code {index}: "{code}" is listed twice.')
            continue
        seen.add(code)
        codes.append({"code": code, "label": label[:120] or code})
    return codes, problems


@transaction.atomic
def approval_queue_create(
    *,
    actor: User | None,
    key: str,
    name: str,
    team: Team | None = None,
    workers: Iterable[Group | User] = (),
    users: Iterable[Group | User] = (),
    lead: User | None = None,
    escalation_group: Group | None = None,
    **settings: Any,
) -> ApprovalQueue:
    """Create a queue; `workers` may work its items, `users` may name it in approval steps (a team's queue
    grants both to the team's group). Refused when `key` is taken or a setting is not valid."""
    key = key.strip()
    # Keys go into URLs (/inbox/queues/<key>/, the dashboards' queue pages): a "/" or any other character
    # outside these would make every page that links the queue fail to build its address.
    if not key or len(key) > 150 or not QUEUE_KEY.fullmatch(key):
        raise ValidationFailed("The queue needs a key.", fields={"key": ["Letters, digits and : - _ without spaces."]})
    if ApprovalQueue.objects.filter(key=key).exists():
        raise ValidationFailed("That key is taken.", fields={"key": [f'A queue "{key}" already exists.']})
    clean = queue_settings_clean({"name": name, **settings})
    queue = ApprovalQueue.objects.create(key=key, team=team, lead=lead, escalation_group=escalation_group, **clean)
    for holder in workers:
        assign_perm(WORK, holder, queue)
    for holder in users:
        assign_perm(USE, holder, queue)
    audit_record(
        actor=actor,
        verb="approval_queue.created",
        target=queue,
        data={"key": key, "team": team.slug if team else None, "settings": _jsonable(clean)},
    )
    return queue


@transaction.atomic
def approval_queue_update(*, actor: User, queue: ApprovalQueue, **changes: Any) -> ApprovalQueue:
    """Change a queue's settings (its lead, an admin, or a manager of the queue). Open items keep the due
    times and escalation steps they were given."""
    if not user_manages_queue(actor, queue):
        raise Forbidden("Only the queue's lead or an admin can change it.")
    # Locked, and only the named columns written: a concurrent change of another setting (the escalation
    # group, members) is never silently undone.
    queue = ApprovalQueue.objects.select_for_update().get(pk=queue.pk)
    lead = changes.pop("lead", queue.lead)
    clean = queue_settings_clean(changes)
    before = {name: getattr(queue, name) for name in clean}
    for name, value in clean.items():
        setattr(queue, name, value)
    changed = {k: [before[k], v] for k, v in _jsonable(clean).items() if before[k] != v}
    if lead != queue.lead:
        changed["lead"] = [queue.lead.get_username() if queue.lead else None, lead.get_username() if lead else None]
    queue.lead = lead
    queue.save(update_fields=[*clean, "lead"])
    audit_record(actor=actor, verb="approval_queue.updated", target=queue, data={"changed": changed})
    return queue


def team_queue_create(team: Team, actor: User | None = None) -> ApprovalQueue:
    """The hook for a new team: its own queue, `team:<slug>`, worked and used by the team's members."""
    return approval_queue_create(
        actor=actor,
        key=team.group.name,
        name=f"{team.name} approvals",
        team=team,
        workers=[team.group],
        users=[team.group],
    )


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


# --- opening an item (the engine's hook) -------------------------------------------------------------------


def _approval_config(run: Run, step_run: StepRun, wait: Wait) -> ApprovalConfig:
    """The approval's settings: the `human.approval` step's config; for an agent's tool call that asks a person
    first, the tool's queue (the item shows the call and its arguments, which the reviewer may correct); for an
    LLM step that holds a flagged result, its guardrails' review queue."""
    if wait.held_output is not None:
        definition = run.step_definition(step_run.step_key)
        guardrails = definition.get("config", {}).get("guardrails") or {}
        flags = [str(flag) for flag in wait.details.get("injection_flags") or []]
        return ApprovalConfig(
            queue=str(guardrails.get("review_queue") or "(no queue)"),
            title=held_review_title(str(definition.get("name") or step_run.name or step_run.step_key), flags),
            # The item's reviewed step is the step itself: its model calls, evidence and corrections.
            review_step=step_run.step_key,
        )
    if not step_run.is_tool_call:
        return ApprovalConfig.model_validate(run.step_definition(step_run.step_key).get("config", {}))
    definition = step_run.definition or {}
    # A tool saved without a queue finds none, and the call fails with that reason (the queue decides about
    # separation of duties, as for any item).
    return ApprovalConfig(
        queue=str(definition.get("approval_queue") or "(no queue)"),
        title=f"An agent asks to use “{definition.get('tool', step_run.name)}”"[:200],
    )


def approval_request_open(step_run: StepRun, wait: Wait) -> None:
    """The engine's hook for a parked `human.approval` step (runs in the parking transaction, run locked).

    The item carries what the reviewer checks: the output of the step named in `review_step` (an extraction's
    data, confidence, evidence and source text), else the step's params. A queue that does not exist fails
    the step with that reason, rather than parking it where no one can see it."""
    run = step_run.run
    config = _approval_config(run, step_run, wait)
    # The first queue, then any later ones of a sequential policy, read in one query.
    keys = [config.queue, *config.then_queues]
    found = {queue.key: queue for queue in ApprovalQueue.objects.filter(key__in=keys)}
    missing = next((key for key in keys if key not in found), None)
    if missing is not None:
        step_run_resume(
            step_run=step_run,
            error=f'Approval queue "{missing}" does not exist: create it, or choose another queue for this step.',
        )
        return
    queue = found[config.queue]
    stages = [found[key].pk for key in keys]
    if wait.held_output is not None:  # the reviewer checks the step's own result, typed by what it produces
        review = _material_from_output(
            wait.held_output, held_review_proposal(wait.held_output), _held_schema(run, step_run, wait.held_output)
        )
        # Without a document of its own, the reviewer compares the result with what the model read.
        review["source_text"] = review["source_text"] or str(wait.payload.get("source_text") or "")
    else:
        review = _review_material(run, config, wait.payload.get("params", {}))
    if step_run.is_tool_call:  # the reviewer checks the call's arguments, typed by the tool's schema
        review["schema"] = (step_run.definition or {}).get("parameters") or {}
    policy = config.policy or queue.policy
    if policy == DecisionPolicy.SEQUENTIAL:
        required = len(stages)
    elif policy == DecisionPolicy.ALL:
        # Everyone who may decide it: under separation of duties, the run's starters are not among them.
        lineage = run_initiator_ids(run) if config.separation_of_duties and queue.separation_of_duties else set()
        required = max(1, len([user for user in queue_workers(queue) if user.pk not in lineage]))
    elif policy == DecisionPolicy.K_OF_N:
        required = config.required_approvals or queue.required_approvals
    else:
        required = 1
    now = timezone.now()
    due_at = _queue_calendar(queue).add(now, queue.sla_hours) if queue.sla_hours else wait.fire_at
    confidence = review["confidence"]
    request = ApprovalRequest.objects.create(
        step_run=step_run,
        run=run,
        queue=queue,
        title=str(wait.details.get("title") or config.title)[:200],
        priority=ApprovalRequest.Priority[config.priority.upper()],
        payload=wait.payload.get("params", {}),
        proposal=review["proposal"],
        corrected=review["proposal"],
        schema=review["schema"],
        confidence=confidence,
        confidence_source=review["confidence_source"],
        min_confidence=min(confidence.values()) if confidence else None,
        evidence=review["evidence"],
        source_text=review["source_text"],
        review_step_key=config.review_step,
        separation_of_duties=config.separation_of_duties and queue.separation_of_duties,
        initiators=sorted(run_initiator_ids(run)),
        policy=policy,
        required_approvals=required,
        stages=stages if policy == DecisionPolicy.SEQUENTIAL else [],
        audit_sample=bool(wait.details.get("audit_sample")),
        due_at=due_at,
        expires_at=wait.fire_at,
    )
    _escalation_schedule(request, queue, now)
    transaction.on_commit(lambda: publish_item_arrived(queue.pk, request.pk))
    audit_record(
        actor=None,
        verb="approval.requested",
        target=request,
        data={"queue": queue.key, "policy": policy, "required": required, "audit_sample": request.audit_sample},
    )
    if queue.assignment != Assignment.PULL:
        chosen = _auto_assignee(request)
        if chosen is not None:
            _assign(request, chosen, actor=None, kind=ApprovalActivity.Kind.ASSIGNED, reason="auto-assignment")


def _queue_calendar(queue: ApprovalQueue) -> BusinessCalendar:
    # A queue without a calendar keeps time around the clock.
    return BusinessCalendar.from_dict(queue.calendar) if queue.calendar else ALWAYS


def _escalation_schedule(request: ApprovalRequest, queue: ApprovalQueue, start: datetime) -> None:
    """`queue`'s escalation chain for `request`, counted from `start` on its calendar. Steps are numbered per
    stage (stage × 100 + position), so a sequential item's later queues add their own chains."""
    if not (queue.sla_hours and queue.escalation):
        return
    fractions = [step["at"] for step in queue.escalation]
    times = escalation_times(_queue_calendar(queue), start, queue.sla_hours, fractions)
    EscalationTimer.objects.bulk_create(
        EscalationTimer(request=request, step=request.stage * 100 + index, action=step["action"], fire_at=fire_at)
        for index, (step, fire_at) in enumerate(zip(queue.escalation, times, strict=True))
    )


def _review_material(run: Run, config: ApprovalConfig, params: Any) -> dict[str, Any]:
    """What the reviewer of a `human.approval` item checks: the output of its `review_step` (an extraction's data,
    confidence, evidence and source text), else the step's params."""
    proposal = params if isinstance(params, dict) else {"value": params}
    if not config.review_step:
        return _material_from_output({}, proposal, {})
    reviewed = (
        StepRun.objects.filter(run=run, step_key=config.review_step, state=StepRun.State.SUCCEEDED)
        .values_list("output", flat=True)
        .first()
    )
    if not isinstance(reviewed, dict):
        return _material_from_output({}, proposal, {})
    data = reviewed.get("data")
    try:
        schema = run.step_definition(config.review_step).get("config", {}).get("json_schema")
    except KeyError:
        schema = None
    return _material_from_output(reviewed, data if isinstance(data, dict) else proposal, schema)


def _held_schema(run: Run, step_run: StepRun, held: dict[str, Any]) -> dict[str, Any]:
    """The shape of a held result's reviewable fields: the step's JSON schema for data, the step's labels for a
    classification, a text otherwise."""
    config = run.step_definition(step_run.step_key).get("config", {})
    if isinstance(held.get("data"), dict):
        schema = config.get("json_schema")
        return schema if isinstance(schema, dict) else {}
    if "label" in held:
        labels = [str(label) for label in config.get("labels") or []]
        return {"type": "object", "properties": {"label": {"type": "string", "enum": labels}}, "required": ["label"]}
    return {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}


def _material_from_output(reviewed: dict[str, Any], proposal: dict[str, Any], schema: Any) -> dict[str, Any]:
    """Review material: the proposal and its schema, with an extraction's confidence, evidence and source text
    where `reviewed` (a step's output) has them."""
    material: dict[str, Any] = {
        "proposal": proposal,
        "schema": schema if isinstance(schema, dict) else {},
        "confidence": {},
        "confidence_source": "none",
        "evidence": {},
        "source_text": "",
    }
    confidence = reviewed.get("confidence")
    if isinstance(confidence, dict):
        material["confidence"] = {
            str(k): float(v) for k, v in confidence.items() if isinstance(v, int | float) and not isinstance(v, bool)
        }
    material["confidence_source"] = str(
        reviewed.get("confidence_source") or ("logprob" if material["confidence"] else "none")
    )[:16]
    evidence = reviewed.get("evidence")
    if isinstance(evidence, dict):
        material["evidence"] = evidence
    material["source_text"] = str(reviewed.get("source_text") or "")
    return material


def queue_workers(queue: ApprovalQueue) -> list[User]:
    """The active people who may work `queue`'s items, by name (admins only when granted explicitly)."""
    holders: QuerySet[User] = get_users_with_perms(  # type: ignore[assignment]
        queue, only_with_perms_in=["work_approvalqueue"], with_group_users=True
    )
    people = list(holders.filter(is_active=True).prefetch_related("groups").order_by("username"))
    for person in people:
        # The prefetched groups answer the role check (user_roles would query once per person).
        person.__dict__.setdefault("_role_names", frozenset(group.name for group in person.groups.all()))
    return [person for person in people if _has_role(person, REVIEWER, ADMIN)]


def _auto_assignee(request: ApprovalRequest) -> User | None:
    excluded = set(request.initiators) if request.separation_of_duties else set()
    excluded |= set(ApprovalDecision.objects.filter(request=request).values_list("actor_id", flat=True))
    candidates = [user for user in queue_workers(request.queue) if user.pk not in excluded]
    if not candidates:
        return None
    if request.queue.assignment == Assignment.LEAST_LOADED:
        load = dict(
            ApprovalRequest.objects.filter(state=ApprovalRequest.State.PENDING, assignee__in=candidates)
            .values_list("assignee")
            .annotate(n=Count("pk"))
        )
        return min(candidates, key=lambda user: (load.get(user.pk, 0), user.username))
    # Round-robin: the one whose turn came longest ago (or never) in this queue. A turn that went to a delegate
    # was still its owner's turn: counted as the delegate's, the absent reviewer would be picked for every item
    # and every item would pile up on the delegate.
    turn = Coalesce(KT("data__delegated_from"), KT("data__to"))
    last = dict(
        ApprovalActivity.objects.filter(request__queue=request.queue, kind=ApprovalActivity.Kind.ASSIGNED)
        .annotate(turn=turn)
        .filter(turn__in=[str(u.pk) for u in candidates])
        .values_list("turn")
        .annotate(latest=Max("pk"))
        .order_by()
        .values_list("turn", "latest")
    )
    return min(candidates, key=lambda user: (last.get(str(user.pk), 0), user.username))


def absence_for(user: User, on: date | None = None) -> OutOfOffice | None:
    """`user`'s absence covering `on` (today), if any."""
    day = on or timezone.localdate()
    return (
        OutOfOffice.objects.filter(user=user, starts_on__lte=day, ends_on__gte=day).select_related("delegate").first()
    )


def _assign(
    request: ApprovalRequest, user: User, *, actor: User | None, kind: str, reason: str = ""
) -> ApprovalRequest:
    """Give `request` to `user`, or to their delegate while they are away (they stay informed). The caller
    holds the run's lock."""
    original = user
    absence = absence_for(user)
    delegate = absence.delegate if absence and absence.delegate.is_active else None
    if (
        delegate is not None
        and not approval_refusal(delegate, request)
        and not ApprovalDecision.objects.filter(request=request, actor=delegate).exists()
    ):
        user = delegate
    now = timezone.now()
    ApprovalRequest.objects.filter(pk=request.pk).update(
        assignee=user,
        claimed_at=now,
        delegated_from=original if user != original else None,
        revision=F("revision") + 1,
    )
    request.refresh_from_db()
    data = {"to": user.pk, "to_name": user.display_name}
    if user != original:
        data.update(delegated_from=original.pk, delegated_from_name=original.display_name)
    ApprovalActivity.objects.create(request=request, actor=actor, kind=kind, reason=reason, data=data)
    audit_record(actor=actor, verb=f"approval.{kind}", target=request, data={**data, "reason": reason[:500]})
    notify(user, request, Notification.Kind.ASSIGNED, f"{request.title}: assigned to you")
    if user != original:
        ApprovalActivity.objects.create(request=request, actor=None, kind=ApprovalActivity.Kind.DELEGATED, data=data)
        notify(
            original,
            request,
            Notification.Kind.DELEGATED,
            f"{request.title}: went to {user.display_name} while you are away",
        )
    return request


def _name(user: User | None) -> str:
    return user.display_name if user is not None else "Someone"


def notify(user: User, request: ApprovalRequest | None, kind: str, text: str) -> Notification:
    """An in-app notification (the badge), mailed in the next digest."""
    return Notification.objects.create(user=user, request=request, kind=kind, text=text[:300])


# --- claiming ---------------------------------------------------------------------------------------------


def _pending_or_conflict(request: ApprovalRequest) -> None:
    if request.state != ApprovalRequest.State.PENDING:
        raise Conflict(f"This item was already {request.get_state_display().lower()}; nothing was changed.")
    if request.step_run.state != StepRun.State.WAITING:
        raise Conflict("The run behind this item is no longer waiting for it (it was cancelled or restarted).")


def _locked_for(actor: User, request: ApprovalRequest) -> ApprovalRequest:
    """The request locked (run first), refused unless `actor` may decide it and it still waits. The right is
    checked on the locked row: a sequential item may have moved to another queue since it was read."""
    current = _locked(request)
    refusal = approval_refusal(actor, current)
    if refusal:
        raise Forbidden(refusal)
    _pending_or_conflict(current)
    return current


def _locked(request: ApprovalRequest) -> ApprovalRequest:
    """The request re-read under its run's lock, then its own (the lock order)."""
    run_lock(request.run_id)
    return (
        ApprovalRequest.objects.select_for_update(of=("self",))
        .select_related("queue", "run", "step_run", "assignee")
        .get(pk=request.pk)
    )


@transaction.atomic
def approval_claim(*, request: ApprovalRequest, actor: User) -> ApprovalRequest:
    """Take an unclaimed item. Claiming one's own item again changes nothing; one that someone else holds
    is a 409 naming them."""
    current = _locked_for(actor, request)
    if current.assignee_id == actor.pk:
        return current
    if current.assignee_id is not None:
        raise Conflict(f"{_name(current.assignee)} is working on this item.")
    _refuse_repeat_decider(current, actor)
    ApprovalRequest.objects.filter(pk=current.pk).update(
        assignee=actor, claimed_at=timezone.now(), delegated_from=None, revision=F("revision") + 1
    )
    ApprovalActivity.objects.create(request=current, actor=actor, kind=ApprovalActivity.Kind.CLAIMED)
    audit_record(actor=actor, verb="approval.claimed", target=current)
    current.refresh_from_db()
    return current


def _refuse_repeat_decider(request: ApprovalRequest, actor: User) -> None:
    if ApprovalDecision.objects.filter(request=request, actor=actor).exists():
        raise Conflict("You already decided this item; someone else must give the next decision.")


def next_candidates(actor: User) -> Any:
    """The items "Next item" would give `actor`, most urgent first: unclaimed, pending, in a queue she works,
    not set aside by her, not decided by her, and not from a run she started (where duties are separated)."""
    from apps.approvals.selectors import worked_queue_ids

    skipped = ApprovalActivity.objects.filter(actor=actor, kind=ApprovalActivity.Kind.SKIPPED).values("request_id")
    return (
        ApprovalRequest.objects.filter(
            state=ApprovalRequest.State.PENDING,
            assignee__isnull=True,
            step_run__state=StepRun.State.WAITING,
            queue__in=worked_queue_ids(actor),
        )
        .exclude(separation_of_duties=True, initiators__contains=[actor.pk])
        .exclude(decisions__actor=actor)
        # One subquery, not two conditions on the many-valued relation (which Django would check separately:
        # any activity of hers and anyone's skip would hide the item).
        .exclude(pk__in=skipped)
        .order_by(F("priority").desc(), F("due_at").asc(nulls_last=True), "created_at", "pk")
    )


def approval_next(*, actor: User) -> ApprovalRequest | None:
    """Claim the most urgent item `actor` may take, or None when there is none. Two reviewers never get the
    same item: each claim is a conditional update under the item's run lock. One statement locks the run of
    the most urgent candidate no other transaction holds (SKIP LOCKED), so reviewers pressing Next together
    spread over the queue instead of queueing behind one row; when others took every candidate, it reads the
    queue again rather than answering "nothing to take" while items wait."""
    tried: set[int] = set()
    for _ in range(NEXT_ROUNDS):
        candidates = list(next_candidates(actor).exclude(pk__in=tried).values_list("pk", flat=True)[:NEXT_CANDIDATES])
        if not candidates:
            return None
        progressed = False
        while candidates:
            with transaction.atomic():
                request_id = _lock_first_free(candidates)
                if request_id is None:
                    break  # the rest are claimed, or their runs are held by someone claiming them right now
                progressed = True
                candidates.remove(request_id)
                tried.add(request_id)
                request = ApprovalRequest.objects.select_related("run", "queue").get(pk=request_id)
                if request.separation_of_duties and actor.pk in request.initiators:
                    continue
                won = ApprovalRequest.objects.filter(
                    pk=request_id, state=ApprovalRequest.State.PENDING, assignee__isnull=True
                ).update(assignee=actor, claimed_at=timezone.now(), delegated_from=None, revision=F("revision") + 1)
                if not won:
                    continue
                request.refresh_from_db()
                ApprovalActivity.objects.create(
                    request=request, actor=actor, kind=ApprovalActivity.Kind.CLAIMED, data={"next": True}
                )
                audit_record(actor=actor, verb="approval.claimed", target=request, data={"by": "next"})
                return request
        if not progressed:
            time.sleep(0.01)  # every candidate's run is held by a claim in flight: read again once they commit
    return None


# The runs of `candidates` in their order, first one no transaction holds, still unclaimed: locked (the run row,
# as run_lock does: the lock order's first lock) and returned, in one statement.
_LOCK_FIRST_FREE_SQL = (
    "SELECT a.id FROM approvals_approvalrequest a JOIN runs_run r ON r.id = a.run_id "
    "WHERE a.id = ANY(%s) AND a.state = 'pending' AND a.assignee_id IS NULL "
    "ORDER BY array_position(%s::bigint[], a.id) LIMIT 1 FOR NO KEY UPDATE OF r SKIP LOCKED"
)


def _lock_first_free(candidates: list[int]) -> int | None:
    with connection.cursor() as cursor:
        cursor.execute(_LOCK_FIRST_FREE_SQL, [candidates, candidates])
        row = cursor.fetchone()
    return int(row[0]) if row else None


@transaction.atomic
def approval_release(*, request: ApprovalRequest, actor: User, reason: str = "") -> ApprovalRequest:
    """Put a claimed item back in its queue (its holder, or the queue's lead or an admin)."""
    current = _locked(request)
    _pending_or_conflict(current)
    if current.assignee_id is None:
        return current
    if current.assignee_id != actor.pk and not user_manages_queue(actor, current.queue):
        raise Forbidden("Only the person working on this item, or the queue's lead, can release it.")
    _unassign(current, actor, ApprovalActivity.Kind.RELEASED, reason)
    return current


def _unassign(request: ApprovalRequest, actor: User, kind: str, reason: str) -> None:
    previous = request.assignee_id
    ApprovalRequest.objects.filter(pk=request.pk).update(
        assignee=None, claimed_at=None, delegated_from=None, revision=F("revision") + 1
    )
    ApprovalActivity.objects.create(request=request, actor=actor, kind=kind, reason=reason, data={"from": previous})
    audit_record(actor=actor, verb=f"approval.{kind}", target=request, data={"from": previous, "reason": reason[:500]})
    request.refresh_from_db()


@transaction.atomic
def approval_skip(*, request: ApprovalRequest, actor: User, reason: str) -> ApprovalRequest:
    """Set an item aside: it goes back to its queue and "Next item" stops offering it to `actor`."""
    if not reason.strip():
        raise ValidationFailed("Say why you skip this item.", fields={"reason": ["A reason is required."]})
    current = _locked_for(actor, request)
    if current.assignee_id not in (None, actor.pk):
        raise Conflict(f"{_name(current.assignee)} is working on this item.")
    _unassign(current, actor, ApprovalActivity.Kind.SKIPPED, reason.strip())
    return current


@transaction.atomic
def approval_reassign(*, request: ApprovalRequest, actor: User, to: User, reason: str) -> ApprovalRequest:
    """Give an item to another reviewer of its queue, with a reason (its holder, or the queue's lead or an
    admin). Refused when the new person may not decide it."""
    if not reason.strip():
        raise ValidationFailed("Say why you reassign this item.", fields={"reason": ["A reason is required."]})
    current = _locked(request)
    _pending_or_conflict(current)
    if current.assignee_id != actor.pk and not user_manages_queue(actor, current.queue):
        raise Forbidden("Only the person working on this item, or the queue's lead, can reassign it.")
    refusal = approval_refusal(to, current)
    if refusal:
        raise ValidationFailed(f"{to.display_name} cannot take this item.", fields={"to": [refusal]})
    if ApprovalDecision.objects.filter(request=current, actor=to).exists():
        raise ValidationFailed(f"{to.display_name} cannot take this item.", fields={"to": ["They already decided it."]})
    return _assign(current, to, actor=actor, kind=ApprovalActivity.Kind.REASSIGNED, reason=reason.strip())


# --- deciding ---------------------------------------------------------------------------------------------


def _field_errors(data: dict[str, Any], schema: dict[str, Any]) -> dict[str, list[str]]:
    if not schema:
        return {}
    errors: dict[str, list[str]] = {}
    for error in jsonschema.Draft202012Validator(schema).iter_errors(data):
        path = list(error.absolute_path)
        if path:
            name = str(path[0])
        elif error.validator == "required":
            name = str(error.message.split("'")[1]) if "'" in error.message else "data"
        else:
            name = "data"
        errors.setdefault(f"edits.{name}", []).append(error.message)
    return errors


def field_changes(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """Every top-level field whose value differs, as {"field", "before", "after"}, in `after`'s order."""
    names = list(after) + [name for name in before if name not in after]
    return [
        {"field": name, "before": before.get(name), "after": after.get(name)}
        for name in names
        if json.dumps(before.get(name), sort_keys=True) != json.dumps(after.get(name), sort_keys=True)
    ]


@transaction.atomic
def approval_decide(
    *,
    request: ApprovalRequest,
    actor: User,
    decision: str,
    reason: str = "",
    reason_code: str = "",
    edits: dict[str, Any] | None = None,
    confirmed: Sequence[str] = (),
    revision: int | None = None,
    bulk: bool = False,
) -> ApprovalRequest:
    """Record `actor`'s decision under the item's policy, and resume the run when the policy is met.

    Refused with 409 when the item is decided, expired or cancelled, held by someone else, changed since
    `revision`, or already decided by `actor`; with 403 when `actor` may not decide it; with field errors when
    the edits break the reviewed step's schema, a low-confidence field was neither confirmed nor corrected,
    or a reason is missing. Any rejection rejects. Under a policy that needs several people an approval that
    changes the data never completes it: someone else approves the changed data (four eyes)."""
    if decision not in DECISIONS:
        raise ValidationFailed("Unknown decision.", fields={"decision": ["Use approved or rejected."]})
    if edits is not None and not isinstance(edits, dict):
        raise ValidationFailed("Edits must be an object.", fields={"edits": ["Must be a JSON object."]})
    try:
        json.dumps(edits or {}, allow_nan=False)
    except (TypeError, ValueError):
        raise ValidationFailed(
            "Edits must be plain data.", fields={"edits": ["Numbers must be finite; values must be JSON."]}
        ) from None
    if "\\u0000" in json.dumps([edits or {}, reason, reason_code, list(confirmed)]):
        raise ValidationFailed("Text may not contain NUL characters.", fields={"reason": ["Remove the NUL character."]})
    current = _locked_for(actor, request)
    if current.assignee_id not in (None, actor.pk):
        raise Conflict(f"{_name(current.assignee)} is working on this item; it was not decided.")
    if revision is not None and revision != current.revision:
        raise Conflict(
            "This item changed since you opened it (claimed, reassigned or decided by someone else). Reload it."
        )
    _refuse_repeat_decider(current, actor)

    queue = current.queue
    codes = {item["code"] for item in queue.reason_codes}
    before = dict(current.corrected or {})
    after = {**before, **(edits or {})}
    changes = field_changes(before, after)
    errors: dict[str, list[str]] = {}
    if reason_code and codes and reason_code not in codes:
        errors["reason_code"] = ["Choose one of the queue's reasons."]
    if decision == ApprovalRequest.State.REJECTED and codes and not reason_code:
        errors["reason_code"] = ["Choose a reason for the rejection."]
    elif decision == ApprovalRequest.State.REJECTED and not (reason.strip() or reason_code):
        errors["reason"] = ["Say why you reject it."]
    if decision == ApprovalRequest.State.APPROVED:
        if changes and codes and not reason_code:
            errors["reason_code"] = ["Choose a reason for your changes."]
        if changes and not codes and not reason.strip():
            errors["reason"] = ["Say why you changed the data."]
        unknown = [
            name for name in (edits or {}) if current.schema and name not in current.schema.get("properties", {})
        ]
        for name in unknown:
            errors[f"edits.{name}"] = ["This field is not part of the data."]
        errors.update(_field_errors(after, current.schema))
        changed_names = {change["field"] for change in changes}
        for name in low_confidence_fields_for(current):
            if name not in changed_names and name not in confirmed:
                errors.setdefault(f"edits.{name}", []).append(
                    f"Low confidence ({current.confidence[name]:.2f}): confirm or correct this field."
                )
    if errors:
        raise ValidationFailed("The decision was not submitted: see the fields.", fields=errors)

    now = timezone.now()
    claimed_at = current.claimed_at if current.assignee_id == actor.pk else None
    ApprovalDecision.objects.create(
        request=current,
        actor=actor,
        decision=decision,
        stage=current.stage,
        reason_code=reason_code,
        reason=reason[:5000],
        data_before=before,
        data_after=after if decision == ApprovalRequest.State.APPROVED else before,
        changes=changes if decision == ApprovalRequest.State.APPROVED else [],
        confirmed_fields=[name for name in confirmed if name in current.confidence],
        confidence=current.confidence,
        time_spent_seconds=(now - claimed_at).total_seconds() if claimed_at else None,
        bulk=bulk,
    )
    ApprovalActivity.objects.create(request=current, actor=actor, kind=decision, reason=reason[:5000])
    approvals = current.approvals_count + (decision == ApprovalRequest.State.APPROVED)
    required = current.required_approvals
    if decision == ApprovalRequest.State.APPROVED and changes and current.separation_of_duties and required > 1:
        # Four eyes on changes: the person who changed the data never gives the approval that completes it.
        required = max(required, approvals + 1)
    final = decision == ApprovalRequest.State.REJECTED or approvals >= required
    digest = {"reason_code": reason_code, "changed": [c["field"] for c in changes], "data_sha256": output_digest(after)}
    if not final:
        stage = current.stage + 1 if current.policy == DecisionPolicy.SEQUENTIAL else current.stage
        next_queue = (
            current.stages[stage]
            if current.policy == DecisionPolicy.SEQUENTIAL and stage < len(current.stages)
            else current.queue_id
        )
        ApprovalRequest.objects.filter(pk=current.pk).update(
            approvals_count=approvals,
            required_approvals=required,
            corrected=after,
            stage=stage,
            queue_id=next_queue,
            assignee=None,
            claimed_at=None,
            delegated_from=None,
            revision=F("revision") + 1,
        )
        moved = next_queue != current.queue_id
        audit_record(
            actor=actor,
            verb="approval.approval_recorded",
            target=current,
            data={**digest, "approvals": approvals, "required": required, "stage": stage},
        )
        current.refresh_from_db()
        if moved:
            # The next queue's service level and escalation chain start now; the last queue's stop.
            EscalationTimer.objects.filter(request=current, fired_at__isnull=True).update(cancelled=True)
            queue_now = current.queue
            due = (
                _queue_calendar(queue_now).add(now, queue_now.sla_hours) if queue_now.sla_hours else current.expires_at
            )
            ApprovalRequest.objects.filter(pk=current.pk).update(due_at=due)
            current.due_at = due
            _escalation_schedule(current, queue_now, now)
            transaction.on_commit(lambda: publish_item_arrived(next_queue, current.pk))
        if current.queue.assignment != Assignment.PULL:
            chosen = _auto_assignee(current)
            if chosen is not None:
                current = _assign(
                    current, chosen, actor=None, kind=ApprovalActivity.Kind.ASSIGNED, reason="auto-assignment"
                )
        return current

    outcome_data = after if decision == ApprovalRequest.State.APPROVED else before
    all_changes = field_changes(current.proposal or {}, outcome_data)
    ApprovalRequest.objects.filter(pk=current.pk, state=ApprovalRequest.State.PENDING).update(
        state=decision,
        decided_by=actor,
        decided_at=now,
        reason_code=reason_code,
        reason=reason[:5000],
        edits={c["field"]: c["after"] for c in all_changes},
        corrected=outcome_data,
        approvals_count=approvals,
        revision=F("revision") + 1,
    )
    EscalationTimer.objects.filter(request=current, fired_at__isnull=True).update(cancelled=True)
    current.refresh_from_db()
    audit_record(
        actor=actor, verb=f"approval.{decision}", target=current, data={**digest, "reason": reason[:500], "bulk": bulk}
    )
    deciders = list(
        ApprovalDecision.objects.filter(request=current)
        .order_by("created_at")
        .values_list("actor__username", flat=True)
    )
    step_run_resume(
        step_run=current.step_run,
        output={
            "decision": decision,
            "branch": decision,
            "reason": reason,
            "reason_code": reason_code,
            "edits": {c["field"]: c["after"] for c in all_changes},
            "changed_fields": [c["field"] for c in all_changes],
            "data": outcome_data,
            "decided_by": actor.get_username(),
            "approvers": deciders,
            "audit_sample": current.audit_sample,
        },
        actor=actor,
    )
    return current


def approval_bulk_approve(
    *, requests: Sequence[ApprovalRequest], actor: User, reason: str = ""
) -> list[ApprovalRequest]:
    """Approve several items at once: only items whose queue allows bulk approval, whose every field scores
    at least the queue's bulk threshold (and its confirmation threshold), under the single-person policy, and
    that `actor` may decide. Any item that does not qualify refuses the whole batch, naming it, and nothing is
    approved. Each approval is a transaction of its own (a transaction locks one run, lock-order rule 1), so an
    item someone else decided between the check and its turn is refused on its own: ValidationFailed names it,
    and the items approved before it stay approved. One audit event per item."""
    problems: dict[str, list[str]] = {}
    for request in requests:
        why = bulk_refusal(actor, request)
        if why:
            problems[str(request.pk)] = [why]
    if problems:
        raise ValidationFailed("Some items cannot be approved in bulk: nothing was approved.", fields=problems)
    approved: list[ApprovalRequest] = []
    late: dict[str, list[str]] = {}
    for request in requests:
        try:
            approved.append(
                approval_decide(
                    request=request,
                    actor=actor,
                    decision=ApprovalRequest.State.APPROVED,
                    reason=reason,
                    confirmed=list(request.confidence),
                    bulk=True,
                )
            )
        except (Conflict, Forbidden, ValidationFailed) as refusal:
            late[str(request.pk)] = [refusal.message]
    if late:
        raise ValidationFailed(
            f"{len(approved)} item{'s' if len(approved) != 1 else ''} approved; these changed meanwhile and were not:",
            fields=late,
        )
    return approved


def bulk_refusal(actor: User, request: ApprovalRequest) -> str | None:
    """None when `request` may be approved in bulk by `actor`, else why not."""
    threshold = request.queue.bulk_threshold
    if threshold is None:
        return f'The "{request.queue.name}" queue does not allow bulk approval.'
    if request.policy != DecisionPolicy.ANY:
        return "Its policy needs more than one person."
    if request.audit_sample:
        return "It was chosen for an audit sample: review it on its own."
    floor = max(threshold, request.queue.confirm_below)
    if not request.confidence or min(request.confidence.values()) < floor:
        return f"Not every field scores at least {floor:.2f}."
    if request.state != ApprovalRequest.State.PENDING:
        return f"It is already {request.get_state_display().lower()}."
    if request.assignee_id not in (None, actor.pk):
        return f"{_name(request.assignee)} is working on it."
    return approval_refusal(actor, request)


# --- time: expiry, escalation, cancellation -----------------------------------------------------------------


def approval_request_expire(step_run: StepRun) -> None:
    """The engine's hook for an approval whose expiry passed (runs in the timer's transaction)."""
    request = ApprovalRequest.objects.filter(step_run=step_run, state=ApprovalRequest.State.PENDING).first()
    if request is None:
        return
    if not ApprovalRequest.objects.filter(pk=request.pk, state=ApprovalRequest.State.PENDING).update(
        state=ApprovalRequest.State.EXPIRED, decided_at=timezone.now(), revision=F("revision") + 1
    ):
        return
    EscalationTimer.objects.filter(request=request, fired_at__isnull=True).update(cancelled=True)
    audit_record(actor=None, verb="approval.expired", target=request)
    step_run_resume(
        step_run=step_run,
        output={"decision": "expired", "branch": "expired", "reason": "", "edits": {}, "decided_by": ""},
    )


def approvals_cancel_for_run(run: Run) -> None:
    """The engine's hook for a cancelled run (its lock held): its pending items close, their timers stop."""
    pending = list(ApprovalRequest.objects.filter(run=run, state=ApprovalRequest.State.PENDING))
    if not pending:
        return
    ApprovalRequest.objects.filter(pk__in=[r.pk for r in pending]).update(
        state=ApprovalRequest.State.CANCELLED, decided_at=timezone.now(), revision=F("revision") + 1
    )
    EscalationTimer.objects.filter(request__in=pending, fired_at__isnull=True).update(cancelled=True)
    for request in pending:
        audit_record(actor=None, verb="approval.cancelled", target=request)


def escalations_fire(*, limit: int = 100) -> int:
    """Fire the escalation steps that are due, each exactly once; returns how many fired. Each runs in a
    transaction of its own that locks the item's run first, claims the timer by a conditional update, acts,
    and audits, so a worker killed mid-way leaves the timer unfired for the next sweep."""
    fired = 0
    due = list(
        EscalationTimer.objects.filter(fired_at__isnull=True, cancelled=False, fire_at__lte=timezone.now())
        .order_by("fire_at", "pk")
        .values_list("pk", "request_id", "request__run_id")[:limit]
    )
    # An item passed over because its run was busy keeps its later steps for the next sweep too: the run may be
    # held by another sweep firing (or about to die firing) the earlier step, and a chain fires in order, so a
    # reassignment never overtakes the reminder before it.
    passed_over: set[int] = set()
    for timer_id, request_id, run_id in due:
        if request_id in passed_over:
            continue
        try:
            with transaction.atomic():
                if not run_try_lock(run_id):
                    passed_over.add(request_id)
                    continue
                if not EscalationTimer.objects.filter(pk=timer_id, fired_at__isnull=True, cancelled=False).update(
                    fired_at=timezone.now()
                ):
                    continue
                timer = EscalationTimer.objects.select_related("request", "request__queue", "request__run").get(
                    pk=timer_id
                )
                _escalate(timer)
                crash_point("escalation_before_commit")
                fired += 1
        except Exception:
            # Rolled back, so it fires on a later sweep; the timers due after it are not held up meanwhile.
            logger.exception("escalation step %s of item %s failed; it will be tried again", timer_id, request_id)
            passed_over.add(request_id)
    return fired


def _escalate(timer: EscalationTimer) -> None:
    request = timer.request
    if request.state != ApprovalRequest.State.PENDING:
        return
    queue = request.queue
    data: dict[str, Any] = {"step": timer.step, "action": timer.action}
    if timer.action == EscalationTimer.Action.REMIND:
        people = [request.assignee] if request.assignee else queue_workers(queue)
        for person in people:
            notify(person, request, Notification.Kind.REMINDER, f"{request.title}: due {_when(request)}")
        data["told"] = [p.pk for p in people if p]
        kind = ApprovalActivity.Kind.REMINDED
    elif timer.action == EscalationTimer.Action.NOTIFY_LEAD:
        if queue.lead:
            notify(
                queue.lead, request, Notification.Kind.ESCALATED, f"{request.title}: due {_when(request)}, still open"
            )
        data["told"] = [queue.lead_id] if queue.lead_id else []
        kind = ApprovalActivity.Kind.ESCALATED
    else:
        data["told"] = []
        kind = ApprovalActivity.Kind.ESCALATED
        group = queue.escalation_group
        if group is not None:
            excluded = set(request.initiators) if request.separation_of_duties else set()
            decided = set(ApprovalDecision.objects.filter(request=request).values_list("actor_id", flat=True))
            # Only someone who may decide it: an assignee who cannot would hold the item out of everyone's reach.
            members = [
                user
                for user in group.user_set.filter(is_active=True).order_by("username")
                if user.pk not in excluded | decided
                and user.pk != request.assignee_id
                and approval_refusal(user, request) is None
            ]
            if members:
                ApprovalActivity.objects.create(request=request, actor=None, kind=kind, data=data)
                audit_record(actor=None, verb="approval.escalated", target=request, data=data)
                _assign(request, members[0], actor=None, kind=ApprovalActivity.Kind.REASSIGNED, reason="escalation")
                return
        if queue.lead:
            notify(
                queue.lead, request, Notification.Kind.ESCALATED, f"{request.title}: breached, no one to reassign to"
            )
            data["told"] = [queue.lead_id]
    ApprovalActivity.objects.create(request=request, actor=None, kind=kind, data=data)
    audit_record(actor=None, verb=f"approval.{kind}", target=request, data=data)


def _when(request: ApprovalRequest) -> str:
    if request.due_at is None:
        return "with no due time"
    return timezone.localtime(request.due_at).strftime("%d %b %H:%M")


# --- out of office, notifications -------------------------------------------------------------------------


@transaction.atomic
def absence_set(*, actor: User, starts_on: date, ends_on: date, delegate: User, note: str = "") -> OutOfOffice:
    """Record that `actor` is away, with the person who takes their items meanwhile."""
    errors: dict[str, list[str]] = {}
    if ends_on < starts_on:
        errors["ends_on"] = ["The last day cannot come before the first."]
    if ends_on > starts_on + timedelta(days=366):
        errors["ends_on"] = ["At most a year at a time."]
    if delegate.pk == actor.pk:
        errors["delegate"] = ["Choose someone else."]
    elif not delegate.is_active:
        errors["delegate"] = ["That person's account is not active."]
    if errors:
        raise ValidationFailed("The absence was not saved.", fields=errors)
    overlapping = OutOfOffice.objects.filter(user=actor, starts_on__lte=ends_on, ends_on__gte=starts_on)
    if overlapping.exists():
        raise ValidationFailed(
            "It overlaps another absence.", fields={"starts_on": ["Change or remove the other absence first."]}
        )
    absence = OutOfOffice.objects.create(
        user=actor, starts_on=starts_on, ends_on=ends_on, delegate=delegate, note=note[:200]
    )
    if starts_on <= timezone.localdate():
        # Items she holds go to her delegate now (after commit: one run lock per transaction).
        transaction.on_commit(absences_hand_over)
    audit_record(
        actor=actor,
        verb="absence.set",
        target=absence,
        data={"starts_on": str(starts_on), "ends_on": str(ends_on), "delegate": delegate.pk},
    )
    return absence


@transaction.atomic
def absence_remove(*, actor: User, absence: OutOfOffice) -> None:
    if absence.user_id != actor.pk:
        raise Forbidden("You can remove only your own absences.")
    audit_record(actor=actor, verb="absence.removed", target=absence, data={"starts_on": str(absence.starts_on)})
    absence.delete()


def absences_hand_over() -> int:
    """Give every pending item held by someone away today to her delegate (she is told); returns how many
    moved. Each item in a transaction of its own, its run locked first; safe to run again (an item already
    with the delegate is not held by the absent person any more). Run by beat with the escalation sweep, and
    when an absence starting today is saved."""
    today = timezone.localdate()
    away = list(OutOfOffice.objects.filter(starts_on__lte=today, ends_on__gte=today).values_list("user_id", flat=True))
    moved = 0
    held = ApprovalRequest.objects.filter(state=ApprovalRequest.State.PENDING, assignee_id__in=away)
    for request in list(held.select_related("run")):
        with transaction.atomic():
            current = _locked(request)
            holder = current.assignee
            if current.state != ApprovalRequest.State.PENDING or holder is None or holder.pk not in away:
                continue
            absence = absence_for(holder)
            delegate = absence.delegate if absence and absence.delegate.is_active else None
            if (
                delegate is None
                or approval_refusal(delegate, current)
                or ApprovalDecision.objects.filter(request=current, actor=delegate).exists()
            ):
                continue  # no one to hand it to: it stays with her (and her queue's escalation chain applies)
            _assign(current, holder, actor=None, kind=ApprovalActivity.Kind.DELEGATED, reason="out of office")
            moved += 1
    return moved


def notifications_mark_read(*, user: User, ids: Sequence[int] | None = None) -> int:
    """Mark `user`'s notifications read (all, or those in `ids`); returns how many changed."""
    unread = Notification.objects.filter(user=user, read_at__isnull=True)
    if ids is not None:
        unread = unread.filter(pk__in=ids)
    return unread.update(read_at=timezone.now())


def audit_sample_rate_for(key: str) -> float:
    """The step library's hook: the audit sample rate of the queue named `key` (0 when it does not exist)."""
    rate = ApprovalQueue.objects.filter(key=key).values_list("audit_sample_rate", flat=True).first()
    return float(rate or 0.0)


# --- saved inbox views --------------------------------------------------------------------------------------

SAVED_VIEW_NAME_MAX = SavedView._meta.get_field("name").max_length or 80
SAVED_VIEW_QUERY_MAX = SavedView._meta.get_field("query").max_length or 1000


@transaction.atomic
def saved_view_create(*, actor: User, name: str, query: str, shared_queue: ApprovalQueue | None = None) -> SavedView:
    """Save an inbox view (its query string) under a name of `actor`'s, unique among her views; shared with
    everyone who works `shared_queue` when she manages that queue. ValidationFailed names the field at fault."""
    name = name.strip()
    errors: dict[str, list[str]] = {}
    if not name:
        errors["name"] = ["Give the view a name."]
    elif len(name) > SAVED_VIEW_NAME_MAX:
        errors["name"] = [f"At most {SAVED_VIEW_NAME_MAX} characters."]
    elif SavedView.objects.filter(owner=actor, name=name).exists():
        errors["name"] = [f'You already have a view called "{name}": choose another name or delete that one.']
    if len(query) > SAVED_VIEW_QUERY_MAX:
        errors["query"] = ["These filters are too long to save."]
    if shared_queue is not None and not user_manages_queue(actor, shared_queue):
        errors["shared_queue"] = [f'Only someone who manages the "{shared_queue.name}" queue can share a view with it.']
    if errors:
        raise ValidationFailed("The view was not saved.", fields=errors)
    try:
        # Two tabs saving the same name at once: the constraint decides, and the loser hears why.
        with transaction.atomic():
            view = SavedView.objects.create(owner=actor, name=name, query=query, shared_queue=shared_queue)
    except IntegrityError:
        raise ValidationFailed(
            "The view was not saved.", fields={"name": [f'You already have a view called "{name}".']}
        ) from None
    audit_record(
        actor=actor,
        verb="saved_view.created",
        target=view,
        data={"name": name, "query": query, "shared_queue": shared_queue.key if shared_queue else None},
    )
    return view


@transaction.atomic
def saved_view_delete(*, actor: User, view: SavedView) -> None:
    """Delete a saved view: its owner only (a view shared with her queue is someone else's to remove)."""
    if view.owner_id != actor.pk:
        raise Forbidden("Only the person who saved a view can delete it.")
    audit_record(actor=actor, verb="saved_view.deleted", target=view, data={"name": view.name})
    view.delete()
