"""Triggers at work: managing a workflow's triggers, and firing them, which means starting runs.

Every firing goes through `_fire`: the payload becomes run inputs (the trigger's mapping, checked against the
workflow's input schema by `run_start`), the run starts with an idempotency key derived from the firing's source
(a schedule's slot, a webhook's Idempotency-Key, a mail's Message-ID, the upstream run), and a `TriggerFiring`
row and an audit event record what came of it, all in one transaction.

Who a run is started as. A form's run is started by the person who submitted it. Every other kind starts its
runs as the trigger's creator: `run_start` checks her right to run the workflow at each firing (a trigger never
does more than its creator still may), and separation of duties in approvals reads the initiator, so the person
who set up an automatic intake cannot approve what it brings in. A shared service account would pass both checks
for everyone, which is what they exist to prevent.

Schedules fire from `ScheduleTimer` rows swept by apps.runs.sweeper; event triggers from the outbox row a finished
run writes (apps.runs.trigger_events); webhooks from the view in apps.runs.trigger_views; mail from the inbound
SMTP server in apps.runs.inbound_mail, or from a mailbox polled over IMAP by apps.runs.mailbox_poll.
"""

from __future__ import annotations

import email.policy
import email.utils
import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import MIMEPart
from email.parser import BytesParser
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import transaction
from django.db.models import OuterRef, QuerySet, Subquery
from django.http import Http404
from django.utils import timezone

from apps.accounts.models import User
from apps.audit.services import audit_record, audit_stream_lock
from apps.connectors.models import Connection
from apps.connectors.rules import workflow_uses_connection
from apps.connectors.selectors import connection_use_problem
from apps.core.exceptions import ApplicationError, Conflict, Forbidden, Unprocessable, ValidationFailed
from apps.core.permissions import has_object_perm, restrict
from apps.core.secrets import secret_decrypt, secret_encrypt
from apps.core.throttling import rate_count, rate_count_read, rate_overflow_note, rate_overflows_take
from apps.runs.documents import document_input_value, document_store
from apps.runs.models import MailboxPoll, Run, ScheduleTimer, TriggerFiring, WebhookReceipt
from apps.runs.services import run_start
from apps.workflows.input_schema import document_field_names
from apps.workflows.models import Trigger, Workflow
from apps.workflows.selectors import (
    AnyUser,
    workflow_can_edit,
    workflow_list_for_user,
    workflow_version_published_latest,
)
from apps.workflows.triggers import (
    REPLAY_WINDOW_SECONDS,
    WEBHOOK_MAX_BYTES,
    MappingFailed,
    chat_input_schema_problem,
    email_mailbox_name,
    inputs_from_payload,
    schedule_next,
    schedule_slots_between,
    schedule_slots_latest,
    secret_new,
    token_new,
    trigger_config_clean,
    webhook_signature_problem,
)

logger = logging.getLogger(__name__)

Outcome = TriggerFiring.Outcome
# A scheduled time fired later than this counts as missed (what `skip_missed` skips): the sweeper runs every few
# seconds, so an on-time firing is never this late.
SCHEDULE_GRACE = timedelta(seconds=60)
MAIL_MAX_BYTES = 25 * 1024 * 1024
# A webhook's refusals of requests not shown to come from its secret's holder are recorded up to
# settings.AIOS_WEBHOOK_REFUSALS_PER_MINUTE in each window of this many seconds; the count of the rest stays
# readable this long after its window for the sweeper's summary.
REFUSAL_WINDOW_SECONDS = 60
REFUSAL_COUNT_KEPT_SECONDS = 3600
REFUSAL_SCOPE = "webhook-refusal"


def inbound_mail_domain() -> str:
    """The domain of email triggers' addresses (`<token>@<domain>`)."""
    return str(getattr(settings, "AIOS_INBOUND_MAIL_DOMAIN", "") or "aios.localhost").lower()


# --- reads ------------------------------------------------------------------------------------------------------


def trigger_list_for_workflow(workflow: Workflow) -> QuerySet[Trigger]:
    """A workflow its caller may already see: its triggers, each with its last firing (`last_at`,
    `last_outcome`, `last_run_id`) and a schedule's next time (`next_at`), in one query."""
    last = TriggerFiring.objects.filter(trigger=OuterRef("pk")).order_by("-at", "-pk")
    upcoming = ScheduleTimer.objects.filter(trigger=OuterRef("pk"), fired_at__isnull=True).order_by("fire_at")
    return (
        Trigger.objects.filter(workflow=workflow)
        .select_related("source_workflow", "created_by")
        .annotate(
            last_at=Subquery(last.values("at")[:1]),
            last_outcome=Subquery(last.values("outcome")[:1]),
            last_run_id=Subquery(last.values("run_id")[:1]),
            next_at=Subquery(upcoming.values("fire_at")[:1]),
        )
        .order_by("name", "pk")
    )


def trigger_get_for_user(user: AnyUser, *, trigger_id: int) -> Trigger:
    """The trigger if `user` may see its workflow; Http404 otherwise (its existence is not revealed)."""
    trigger = Trigger.objects.select_related("workflow", "source_workflow", "created_by").filter(pk=trigger_id).first()
    if trigger is None or not workflow_list_for_user(user).filter(pk=trigger.workflow_id).exists():
        raise Http404("No such trigger.")
    return trigger


def trigger_firing_list(trigger: Trigger) -> QuerySet[TriggerFiring]:
    """A trigger's history, newest first (its caller may see the trigger)."""
    return TriggerFiring.objects.filter(trigger=trigger).select_related("run").order_by("-at", "-pk")


def email_address_for(trigger: Trigger) -> str:
    """The address an email trigger receives mail at."""
    return f"{trigger.token}@{inbound_mail_domain()}"


def email_trigger_for_address(address: str) -> Trigger | None:
    """The enabled or paused email trigger an address names; None for any other address (and for an email
    trigger that reads a mailbox instead)."""
    local, at, domain = address.strip().strip("<>").rpartition("@")
    if not at or domain.lower() != inbound_mail_domain() or not local.isalnum():
        return None
    return (
        Trigger.objects.select_related("workflow", "created_by")
        .filter(token=local.lower(), kind=Trigger.Kind.EMAIL)
        .exclude(config__has_key="connection")  # --- mailbox triggers read their mailbox, they have no address
        .first()
    )


# --- managing triggers ------------------------------------------------------------------------------------------


def _require_edit(actor: User, workflow: Workflow) -> None:
    if not workflow_can_edit(actor, workflow):
        raise Forbidden("Only those who may change this workflow manage its triggers.")


def _locked(trigger: Trigger) -> Trigger:
    """The trigger's row locked for a change that keeps it: FOR NO KEY UPDATE of the trigger alone. Not FOR
    UPDATE, which also blocks the check PostgreSQL makes at commit of a transaction that added a history row
    for this trigger: a poll that recorded its outcome (and so holds the trigger's audit stream) would wait
    for this lock while this change waits for that stream, a deadlock."""
    return Trigger.objects.select_for_update(no_key=True, of=("self",)).select_related("workflow").get(pk=trigger.pk)


def _audit(actor: User | None, verb: str, trigger: Trigger, data: dict[str, Any] | None = None) -> None:
    audit_record(
        actor=actor,
        verb=verb,
        target=trigger,
        data={"workflow": trigger.workflow.slug, "kind": trigger.kind, "name": trigger.name, **(data or {})},
    )


def _source_workflow(actor: User, workflow: Workflow, slug: str) -> Workflow:
    """An event trigger's source: a workflow the creator may see, which is not downstream of `workflow`."""
    if not slug:
        raise ValidationFailed("The trigger is not valid.", fields={"source": ["Choose the workflow to follow."]})
    source = workflow_list_for_user(actor).filter(slug=slug).first()
    if source is None:
        raise ValidationFailed(
            "The trigger is not valid.", fields={"source": [f"No workflow you may see is called “{slug}”."]}
        )
    if source.pk == workflow.pk:
        raise ValidationFailed(
            "The trigger is not valid.", fields={"source": ["A workflow cannot start itself when it finishes."]}
        )
    # Would source → workflow close a loop? Follow what `workflow` already starts, downstream.
    seen, frontier = {workflow.pk}, [workflow.pk]
    while frontier:
        frontier = list(
            Trigger.objects.filter(kind=Trigger.Kind.EVENT, source_workflow_id__in=frontier)
            .exclude(workflow_id__in=seen)
            .values_list("workflow_id", flat=True)
        )
        if source.pk in frontier:
            raise ValidationFailed(
                "The trigger is not valid.",
                fields={"source": [f"“{source.name}” already runs after this workflow: that would be a loop."]},
            )
        seen.update(frontier)
    return source


def chat_workflow_problem(workflow: Workflow) -> str | None:
    """Why `workflow` cannot back a chat assistant now (nothing published, or its input does not take a message),
    or None."""
    version = workflow_version_published_latest(workflow)
    if version is None:
        return f"Publish “{workflow.name}” first: a chat assistant runs its published version."
    return chat_input_schema_problem(version.input_schema)


@transaction.atomic
def trigger_create(
    *,
    actor: User,
    workflow: Workflow,
    kind: str,
    name: str,
    config: Any = None,
    inputs: Any = None,
    source: str = "",
    now: datetime | None = None,
) -> tuple[Trigger, str]:
    """Add a trigger to `workflow`; returns (trigger, secret). The secret is a webhook's signing secret in clear
    text, returned this once and stored encrypted ("" for other kinds). A schedule is armed at once.

    Refuses with field errors: an unknown kind, a name in use, a cron expression or time zone that does not
    parse, an input mapping that does not parse, an event source the creator may not see or that would loop."""
    _require_edit(actor, workflow)
    name = " ".join(str(name or "").split())[:120]
    settings_, errors = trigger_config_clean(kind, config, inputs)
    # --- email triggers that read a mailbox ---
    mailbox_problem = mailbox_use_problem(actor, workflow, email_mailbox_name(settings_.config))
    if kind == Trigger.Kind.EMAIL and mailbox_problem:
        errors["connection"] = [mailbox_problem]
    # --- chat: only a workflow that takes a message (and the history) can answer one ---
    if kind == Trigger.Kind.CHAT:
        chat_problem = chat_workflow_problem(workflow)
        if chat_problem:
            errors["workflow"] = [chat_problem]
    if not name:
        errors["name"] = ["Give the trigger a name."]
    elif Trigger.objects.filter(workflow=workflow, name=name).exists():
        errors["name"] = [f"This workflow already has a trigger called “{name}”."]
    if errors:
        raise ValidationFailed("The trigger is not valid.", fields=errors)
    source_workflow = _source_workflow(actor, workflow, source) if kind == Trigger.Kind.EVENT else None
    secret = secret_new() if kind == Trigger.Kind.WEBHOOK else ""
    trigger = Trigger.objects.create(
        workflow=workflow,
        kind=kind,
        name=name,
        config=settings_.config,
        inputs=settings_.inputs,
        token=token_new(),
        secret=secret_encrypt(secret),
        source_workflow=source_workflow,
        created_by=actor,
    )
    _audit(actor, "trigger.created", trigger, {"config": settings_.config, "inputs": settings_.inputs})
    if kind == Trigger.Kind.SCHEDULE:
        schedule_arm(trigger, after=now or timezone.now())
    return trigger, secret


@transaction.atomic
def trigger_update(
    *,
    actor: User,
    trigger: Trigger,
    name: str | None = None,
    config: Any = None,
    inputs: Any = None,
    now: datetime | None = None,
) -> Trigger:
    """Change a trigger's name, settings or input mapping (its kind, token and source stay). A schedule whose
    times changed is armed again from now."""
    _require_edit(actor, trigger.workflow)
    locked = _locked(trigger)
    new_config = locked.config if config is None else config
    new_inputs = locked.inputs if inputs is None else inputs
    settings_, errors = trigger_config_clean(locked.kind, new_config, new_inputs)
    new_name = locked.name if name is None else " ".join(str(name).split())[:120]
    # --- email triggers that read a mailbox: checked on every change, as the workflow's rights may have changed
    mailbox = email_mailbox_name(settings_.config) if locked.kind == Trigger.Kind.EMAIL else ""
    mailbox_problem = mailbox_use_problem(actor, locked.workflow, mailbox)
    if mailbox_problem:
        errors["connection"] = [mailbox_problem]
    if not new_name:
        errors["name"] = ["Give the trigger a name."]
    elif Trigger.objects.filter(workflow=locked.workflow, name=new_name).exclude(pk=locked.pk).exists():
        errors["name"] = [f"This workflow already has a trigger called “{new_name}”."]
    if errors:
        raise ValidationFailed("The trigger is not valid.", fields=errors)
    times_changed = locked.kind == Trigger.Kind.SCHEDULE and (
        settings_.config.get("cron"),
        settings_.config.get("timezone"),
    ) != (locked.config.get("cron"), locked.config.get("timezone"))
    if mailbox != email_mailbox_name(locked.config):
        # Another mailbox (or none): its cursor means nothing there; the next poll starts afresh, at once.
        MailboxPoll.objects.filter(trigger=locked).delete()
    locked.name, locked.config, locked.inputs = new_name, settings_.config, settings_.inputs
    locked.save(update_fields=["name", "config", "inputs", "updated_at"])
    _audit(actor, "trigger.changed", locked, {"config": settings_.config, "inputs": settings_.inputs})
    if times_changed and locked.enabled:
        ScheduleTimer.objects.filter(trigger=locked, fired_at__isnull=True).delete()
        schedule_arm(locked, after=now or timezone.now())
    return locked


@transaction.atomic
def trigger_pause(*, actor: User, trigger: Trigger, now: datetime | None = None) -> Trigger:
    """Stop a trigger firing: its form, webhook and address refuse, its schedule's next time is dropped."""
    _require_edit(actor, trigger.workflow)
    # The schedule's rows first, then the trigger: the sweeper holds a due row while it fires, so a pause waits
    # for a firing in progress to commit instead of both waiting on each other.
    ScheduleTimer.objects.filter(trigger_id=trigger.pk, fired_at__isnull=True).delete()
    locked = _locked(trigger)
    if not locked.enabled:
        raise Conflict(f"“{locked.name}” is already paused.")
    locked.enabled, locked.paused_at = False, now or timezone.now()
    locked.save(update_fields=["enabled", "paused_at", "updated_at"])
    _audit(actor, "trigger.paused", locked)
    return locked


@transaction.atomic
def trigger_resume(*, actor: User, trigger: Trigger, now: datetime | None = None) -> tuple[Trigger, int]:
    """Let a paused trigger fire again; returns (trigger, skipped): for a schedule, how many of its times passed
    while it was paused (none of them run; a history row says how many), and its next time counts from now."""
    _require_edit(actor, trigger.workflow)
    now = now or timezone.now()
    locked = _locked(trigger)
    if locked.enabled:
        raise Conflict(f"“{locked.name}” is not paused.")
    skipped = 0
    if locked.kind == Trigger.Kind.SCHEDULE and locked.paused_at is not None:
        cron, zone = locked.config["cron"], locked.config["timezone"]
        skipped = len(schedule_slots_between(cron, zone, locked.paused_at, now))
    locked.enabled, locked.paused_at = True, None
    locked.save(update_fields=["enabled", "paused_at", "updated_at"])
    _audit(actor, "trigger.resumed", locked, {"skipped": skipped})
    if locked.kind == Trigger.Kind.SCHEDULE:
        if skipped:
            _record(
                locked, Outcome.SKIPPED, f"{_times(skipped)} passed while the trigger was paused; none ran.", now=now
            )
        schedule_arm(locked, after=now)
    return locked, skipped


@transaction.atomic
def trigger_delete(*, actor: User, trigger: Trigger) -> None:
    """Remove a trigger and its history (the runs it started stay, with their own audit trail)."""
    _require_edit(actor, trigger.workflow)
    ScheduleTimer.objects.filter(trigger_id=trigger.pk, fired_at__isnull=True).delete()
    audit_stream_lock(trigger)  # before the row: see audit_stream_lock
    locked = Trigger.objects.select_for_update(of=("self",)).select_related("workflow").get(pk=trigger.pk)
    _audit(actor, "trigger.deleted", locked, {"firings": locked.firings.count()})
    locked.delete()


@transaction.atomic
def trigger_secret_rotate(*, actor: User, trigger: Trigger) -> str:
    """A new signing secret for a webhook, returned this once; requests signed with the old one are refused."""
    _require_edit(actor, trigger.workflow)
    if trigger.kind != Trigger.Kind.WEBHOOK:
        raise Conflict("Only a webhook has a signing secret.")
    secret = secret_new()
    Trigger.objects.filter(pk=trigger.pk).update(secret=secret_encrypt(secret), updated_at=timezone.now())
    _audit(actor, "trigger.secret_rotated", trigger)
    return secret


def _times(count: int) -> str:
    return f"{count} scheduled time{'s' if count != 1 else ''}"


# --- firing -----------------------------------------------------------------------------------------------------


@dataclass
class Firing:
    """What came of one firing: its outcome, a short detail, the run (started or repeated), the HTTP-like status
    an interface answers with, and field errors when the payload did not fit."""

    outcome: str
    detail: str
    run: Run | None = None
    status: int = 202
    fields: dict[str, list[str]] = field(default_factory=dict)
    retry_after: int = 0

    @property
    def started(self) -> bool:
        return self.outcome in (Outcome.STARTED, Outcome.DUPLICATE)


def _record(
    trigger: Trigger,
    outcome: str,
    detail: str,
    *,
    run: Run | None = None,
    key: str = "",
    actor: User | None = None,
    now: datetime | None = None,
) -> TriggerFiring:
    """The history row and its audit event (in the caller's transaction)."""
    firing = TriggerFiring.objects.create(
        trigger=trigger, at=now or timezone.now(), outcome=outcome, detail=detail[:500], run=run, key=key[:128]
    )
    audit_record(
        actor=actor,
        verb=f"trigger.{outcome}",
        target=trigger,
        data={"kind": trigger.kind, "detail": detail[:500], "run": run.pk if run else None, "key": key[:128]},
    )
    return firing


def _idempotency_key(trigger: Trigger, source: str) -> str:
    """The run's idempotency key: the trigger's own namespace, so it never meets a key its creator used herself."""
    key = f"trigger:{trigger.pk}:{source}"
    return key if len(key) <= 128 else f"trigger:{trigger.pk}:sha256:{hashlib.sha256(source.encode()).hexdigest()}"


def _fields_text(fields: dict[str, list[str]]) -> str:
    return "; ".join(f"{name}: {' '.join(messages)}" for name, messages in fields.items())


def _fire(
    trigger: Trigger,
    *,
    payload: dict[str, Any],
    source_key: str,
    passthrough: bool = False,
    actor: User | None = None,
    documents: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> Firing:
    """Start a run from `payload` and record the firing; the caller holds a transaction.

    `actor` is who starts the run (default: the trigger's creator); `source_key` identifies the firing at its
    source, so a repeat gives the same run; `documents` are document input values that fill the schema's
    document fields the mapping leaves empty."""
    starter = actor or trigger.created_by
    version = workflow_version_published_latest(trigger.workflow)
    schema = version.input_schema if version is not None else {}
    key = _idempotency_key(trigger, source_key) if source_key else ""
    audit_actor = actor
    try:
        inputs = inputs_from_payload(trigger.inputs, payload, schema, passthrough=passthrough)
        for name, value in (documents or {}).items():
            inputs.setdefault(name, value)
        run, created = run_start(
            actor=starter, workflow=trigger.workflow, inputs=inputs, idempotency_key=key, trigger=trigger.kind
        )
    except MappingFailed as failure:
        detail = f"The input mapping did not work on this payload: {failure}"
        _record(trigger, Outcome.REFUSED, detail, key=source_key, actor=audit_actor, now=now)
        return Firing(Outcome.REFUSED, detail, status=400)
    except ValidationFailed as refusal:
        detail = f"The payload does not fit the workflow's input: {_fields_text(refusal.fields)}"
        _record(trigger, Outcome.REFUSED, detail, key=source_key, actor=audit_actor, now=now)
        return Firing(Outcome.REFUSED, detail, status=400, fields=refusal.fields)
    except Unprocessable as refusal:
        _record(trigger, Outcome.REFUSED, refusal.message, key=source_key, actor=audit_actor, now=now)
        return Firing(Outcome.REFUSED, refusal.message, status=422)
    except Forbidden:
        detail = f"{starter.display_name}, whose trigger this is, may no longer run the workflow."
        _record(trigger, Outcome.REFUSED, detail, key=source_key, actor=audit_actor, now=now)
        return Firing(Outcome.REFUSED, detail, status=403)
    except ApplicationError as refusal:  # archived, nothing published
        _record(trigger, Outcome.REFUSED, refusal.message, key=source_key, actor=audit_actor, now=now)
        return Firing(Outcome.REFUSED, refusal.message, status=refusal.status_code)
    if created:
        _record(
            trigger, Outcome.STARTED, f"Run #{run.pk} started.", run=run, key=source_key, actor=audit_actor, now=now
        )
        return Firing(Outcome.STARTED, f"Run #{run.pk} started.", run=run, status=202)
    detail = f"Already received: run #{run.pk} was started for it."
    _record(trigger, Outcome.DUPLICATE, detail, run=run, key=source_key, actor=audit_actor, now=now)
    return Firing(Outcome.DUPLICATE, detail, run=run, status=200)


def _refuse(trigger: Trigger, detail: str, status: int, *, key: str = "", now: datetime | None = None) -> Firing:
    _record(trigger, Outcome.REFUSED, detail, key=key, now=now)
    return Firing(Outcome.REFUSED, detail, status=status)


# --- email triggers that read a mailbox (polled by apps/runs/mailbox_poll.py) -----------------------------------


@transaction.atomic
def trigger_history_record(trigger: Trigger, outcome: str, detail: str, *, key: str = "") -> TriggerFiring:
    """A history row and its audit event for something that started no run (a mailbox poll that failed, a message
    refused before it was read), in a transaction of its own."""
    return _record(trigger, outcome, detail, key=key)


def mailbox_use_problem(actor: User | None, workflow: Workflow, name: str) -> str | None:
    """Why an email trigger of `workflow` may not read the mailbox connection `name`, or None when it may (and
    when `name` is empty: the trigger uses its inbound address). The person setting it up must be allowed to use
    the connection, and so must the workflow (its team), which is what every poll checks again."""
    if not name:
        return None
    if actor is not None:
        problem = connection_use_problem(actor, name, kind="mailbox")
        if problem:
            return problem[0].upper() + problem[1:] + "."
    connection = Connection.objects.filter(name=name, kind="mailbox").first()
    if connection is None:
        return f'There is no mailbox connection "{name}".'
    if not workflow_uses_connection(workflow.pk, connection):
        owner = f"its team {workflow.team.name}" if workflow.team is not None else "its owner"
        return f"“{workflow.name}” may not read the mailbox “{connection.label}”: {owner} has no right to use it."
    return None


# --- form ------------------------------------------------------------------------------------------------------


def form_trigger_for_user(user: AnyUser, *, trigger_id: int) -> Trigger:
    """A form trigger `user` may submit: 404 when she may not see the workflow or there is no such form, 403 when
    she may see it but not run it, 409 (Conflict) while the form is paused."""
    trigger = trigger_get_for_user(user, trigger_id=trigger_id)
    if trigger.kind != Trigger.Kind.FORM:
        raise Http404("No such form.")
    if not has_object_perm(user, "workflows.run_workflow", trigger.workflow):
        raise Forbidden("You may view this workflow but not run it.")
    return trigger


@transaction.atomic
def form_submit(*, actor: User, trigger: Trigger, inputs: dict[str, Any]) -> Firing:
    """Start a run from a form's submitted fields, as the person who submitted them. A paused form refuses."""
    if not Trigger.objects.filter(pk=trigger.pk, enabled=True).exists():
        detail = "This form is paused: it does not start runs for now."
        _record(trigger, Outcome.REFUSED, detail, actor=actor)
        return Firing(Outcome.REFUSED, detail, status=409)
    return _fire(trigger, payload=inputs, source_key="", passthrough=True, actor=actor)


# --- webhook ---------------------------------------------------------------------------------------------------


@dataclass
class WebhookRequest:
    """What the webhook view read from the request, and nothing else (no Django request here)."""

    token: str
    body: bytes
    content_type: str
    timestamp: str
    signature: str
    idempotency_key: str
    too_large: bool = False


def webhook_receive(request: WebhookRequest, *, now: float | None = None) -> tuple[Trigger | None, Firing]:
    """Check and fire one webhook request; returns (trigger, firing), trigger None for an unknown token (404).

    Order matters: the signature is checked before anything else is revealed about the trigger, so a sender
    without the secret learns only that the URL exists. Each refusal is a history row and an audit event in a
    transaction of its own (no run starts), except past the limit on refusals of requests not shown to be signed
    (`_refuse_unsigned`): those are answered 429 and only counted."""
    clock = now if now is not None else timezone.now().timestamp()
    at = datetime.fromtimestamp(clock, tz=UTC)
    trigger = (
        Trigger.objects.select_related("workflow", "created_by")
        .filter(token=request.token, kind=Trigger.Kind.WEBHOOK)
        .first()
        if request.token.isalnum()
        else None
    )
    if trigger is None:
        return None, Firing(Outcome.REFUSED, "No such webhook.", status=404)
    with transaction.atomic():
        if request.too_large:
            detail = f"The body is larger than {WEBHOOK_MAX_BYTES // 1024} KB."
            return trigger, _refuse_unsigned(trigger, detail, 413, clock=clock)
        try:
            secret = secret_decrypt(trigger.secret)
        except ApplicationError:
            # The key the secret was saved with is gone (dropped before `credentials_rotate` ran): no request can
            # be checked, so none is accepted, and the owner sees why in the history instead of a server error.
            logger.error(
                "webhook trigger %s: its signing secret cannot be decrypted with the configured keys", trigger.pk
            )
            detail = (
                "This webhook's signing secret cannot be read with the server's current credentials keys, so no "
                "request can be checked; its owner must rotate the secret (or an administrator restore the key)."
            )
            return trigger, _refuse_unsigned(trigger, detail, 503, clock=clock)
        problem = webhook_signature_problem(
            secret=secret,
            timestamp=request.timestamp,
            signature=request.signature,
            body=request.body,
            idempotency_key=request.idempotency_key,
            now=clock,
        )
        if problem:
            return trigger, _refuse_unsigned(trigger, problem, 401, clock=clock)
        receipt, first_time = _webhook_receipt(trigger, request, at=at)
        if not first_time and receipt.run is not None:
            # This exact signed request was already received: the same answer as run start's idempotency gives a
            # repeat (200, the first run), whatever Idempotency-Key rules would say, and no second run.
            detail = f"Already received: this exact request started run #{receipt.run.pk}."
            _record(trigger, Outcome.DUPLICATE, detail, run=receipt.run, key=f"receipt:{receipt.digest[:40]}", now=at)
            return trigger, Firing(Outcome.DUPLICATE, detail, run=receipt.run, status=200)
        if not Trigger.objects.filter(pk=trigger.pk, enabled=True).exists():
            return trigger, _refuse(trigger, "This webhook is paused: it does not start runs for now.", 409, now=at)
        if request.content_type.split(";")[0].strip().lower() != "application/json":
            return trigger, _refuse(trigger, "Send the body as JSON (Content-Type: application/json).", 415, now=at)
        if len(request.idempotency_key) > 100:
            return trigger, _refuse(trigger, "The Idempotency-Key header has at most 100 characters.", 400, now=at)
        try:
            payload = json.loads(request.body)
        except (ValueError, UnicodeDecodeError):
            return trigger, _refuse(trigger, "The body is not valid JSON.", 400, now=at)
        if not isinstance(payload, dict):
            return trigger, _refuse(trigger, "The body must be a JSON object of input fields.", 400, now=at)
        # Without a key of the sender's, the signature stands in: a captured request replayed inside the window
        # gets the run it already started, not a second one.
        source = (
            f"key:{request.idempotency_key}"
            if request.idempotency_key
            else f"signature:{hashlib.sha256(request.signature.encode()).hexdigest()[:40]}"
        )
        firing = _fire(trigger, payload=payload, source_key=source, passthrough=True, now=at)
        if firing.run is not None:
            WebhookReceipt.objects.filter(pk=receipt.pk).update(run=firing.run)
        return trigger, firing


def _refuse_unsigned(trigger: Trigger, detail: str, status: int, *, clock: float) -> Firing:
    """Refuse a request that is not shown to come from the holder of the webhook's secret (its signature is wrong,
    or it could not be checked): recorded like any refusal up to the limit in the current window, then answered
    429 with nothing written, the first one past the limit noting the window for `webhook_refusals_summarize`.

    The limit is applied after the signature check, not before it: whoever knows the URL can send junk, and a limit
    on all requests would then shut out the sender who signs correctly. A signed request is never counted here, so
    it is accepted however much junk arrives; what a junk request costs past the limit is the trigger's lookup, an
    HMAC and one Redis increment, no row and no audit event."""
    limit = settings.AIOS_WEBHOOK_REFUSALS_PER_MINUTE
    if limit > 0:
        period = REFUSAL_WINDOW_SECONDS
        count, window = rate_count(
            scope=REFUSAL_SCOPE, key=str(trigger.pk), period=period, now=clock, keep=REFUSAL_COUNT_KEPT_SECONDS
        )
        if count > limit:
            if count == limit + 1:
                rate_overflow_note(scope=REFUSAL_SCOPE, member=f"{trigger.pk}:{window}:{limit}", due=window + period)
            wait = max(1, window + period - int(clock))
            # While the secret cannot be read nothing is accepted, so the 503's reason must not promise otherwise.
            still = "" if status == 503 else "; correctly signed requests are still accepted"
            detail = (
                f"{detail} More than {limit} requests to this webhook were refused in this minute, so this one is "
                f"not recorded{still}."
            )
            return Firing(Outcome.REFUSED, detail, status=429, retry_after=wait)
    return _refuse(trigger, detail, status, now=datetime.fromtimestamp(clock, tz=UTC))


def webhook_refusals_summarize(now: datetime) -> int:
    """For each window that has ended in which a webhook refused more unsigned requests than it records, one
    history row and audit event, dated at the window's end, saying how many were not recorded (the sweeper's job);
    returns how many it wrote. Each window is taken from the shared set by one sweeper only."""
    written = 0
    for member in rate_overflows_take(scope=REFUSAL_SCOPE, now=now.timestamp()):
        try:
            trigger_id, window, limit = (int(part) for part in member.split(":"))
        except ValueError:
            logger.warning("webhook refusals: dropped a malformed window %r", member)
            continue
        trigger = Trigger.objects.select_related("workflow").filter(pk=trigger_id).first()
        if trigger is None:  # deleted since, with its history
            continue
        count = rate_count_read(scope=REFUSAL_SCOPE, key=str(trigger_id), window=window)
        start = datetime.fromtimestamp(window, tz=UTC)
        minute = f"the minute from {start:%H:%M} UTC"
        if count is None:
            detail = f"More refused requests in {minute} were not recorded (how many was lost with the count)."
        else:
            unrecorded = count - limit
            plural = unrecorded != 1
            detail = (
                f"{unrecorded} more refused request{'s' if plural else ''} in {minute} "
                f"{'were' if plural else 'was'} not recorded."
            )
        try:
            with transaction.atomic():
                _record(
                    trigger,
                    Outcome.REFUSED,
                    detail,
                    key=f"unrecorded:{window}",
                    now=start + timedelta(seconds=REFUSAL_WINDOW_SECONDS),
                )
        except Exception:
            # Back in the set for the next sweep: the summary is late, not lost.
            rate_overflow_note(scope=REFUSAL_SCOPE, member=member, due=now.timestamp())
            raise
        written += 1
    return written


def _webhook_receipt(trigger: Trigger, request: WebhookRequest, *, at: datetime) -> tuple[WebhookReceipt, bool]:
    """The receipt row of a correctly signed request: (row, made now). A concurrent twin waits on the unique
    index until the first commits, then reads its row. Kept until the request's timestamp leaves the window."""
    digest = hashlib.sha256(request.signature.strip().encode()).hexdigest()
    expires = datetime.fromtimestamp(int(request.timestamp) + REPLAY_WINDOW_SECONDS + 1, tz=UTC)
    return WebhookReceipt.objects.select_related("run").get_or_create(
        trigger=trigger, digest=digest, defaults={"received_at": at, "expires_at": max(expires, at)}
    )


def webhook_receipts_prune(now: datetime, *, batch: int = 5000) -> int:
    """Delete receipts whose request could no longer pass the timestamp check (the sweeper's job); returns how
    many. In batches, so a backlog never becomes one long delete."""
    expired = list(WebhookReceipt.objects.filter(expires_at__lt=now).values_list("pk", flat=True)[:batch])
    if not expired:
        return 0
    return WebhookReceipt.objects.filter(pk__in=expired).delete()[0]


# --- email -----------------------------------------------------------------------------------------------------


@dataclass
class MailReply:
    """The SMTP reply to a message: 250 after the firing committed, 5xx for a refusal, 4xx to try later."""

    code: int
    text: str

    @property
    def line(self) -> str:
        return f"{self.code} {self.text}"


def _html_text(html: str) -> str:
    import lxml.html

    try:
        return str(lxml.html.fromstring(html).text_content()).strip()
    except (ValueError, TypeError, lxml.etree.ParserError):
        return ""


class MailUnreadable(Exception):
    """A message that is not an email message at all (no header fields): refused for good, never retried."""


def _header(message: MIMEPart, name: str) -> str:
    # A malformed header (an unclosed "Message-ID: <") makes the header parser raise: it reads as absent.
    try:
        return str(message.get(name, "")).strip()
    except Exception:  # the parser's own errors vary (IndexError, ValueError, ...); any of them means unreadable
        return ""


def _text_of(part: MIMEPart, notes: list[str]) -> str:
    """A text part's content; bytes no character set can read become U+FFFD instead of an error."""
    try:
        return str(part.get_content())
    except (LookupError, UnicodeError, ValueError) as error:
        data = part.get_payload(decode=True)
        data = data if isinstance(data, bytes) else b""
        charset = part.get_content_charset() or "utf-8"
        try:
            text = data.decode(charset, errors="replace")
        except LookupError:
            text = data.decode("utf-8", errors="replace")
            notes.append(f"The text's character set “{charset[:40]}” is unknown; it was read as UTF-8.")
        else:
            notes.append(
                f"The text could not be decoded cleanly ({type(error).__name__}); unreadable bytes were replaced."
            )
        return text


def mail_payload(raw: bytes, *, mail_from: str) -> tuple[dict[str, Any], list[tuple[str, str, bytes]], str]:
    """A message as a trigger payload: (payload, attachments as (name, type, bytes), source key).

    The payload holds `subject`, `sender` (the From address, else the envelope's), `to`, `text` (the plain
    part, else the HTML part's text), `message_id`, `date`, `attachments` (name, type and size of each) and, when
    something could not be read, `notes` saying what. The source key derives from the Message-ID, or from the raw
    message's hash when it has none.

    What a sender wrote never makes this raise: an unknown character set or bytes that do not decode become
    replacement characters, a malformed header reads as empty, an attachment that cannot be read is left out
    with a note. The one refusal is MailUnreadable, for bytes with no header fields at all."""
    message = BytesParser(policy=email.policy.default).parsebytes(raw)
    if not message.keys():
        raise MailUnreadable("The message has no header fields: it is not an email message.")
    notes: list[str] = []
    text = ""
    try:
        body = message.get_body(preferencelist=("plain", "html"))
    except Exception:  # a multipart structure the parser cannot walk
        body = None
        notes.append("The message's structure could not be read; its text is left empty.")
    if body is not None:
        content = _text_of(body, notes)
        text = _html_text(content) if body.get_content_type() == "text/html" else content
    attachments: list[tuple[str, str, bytes]] = []
    try:
        parts = list(message.iter_attachments())
    except Exception:
        parts = []
        notes.append("The message's attachments could not be listed; none were taken.")
    for number, part in enumerate(parts, 1):
        try:
            data = part.get_payload(decode=True) or b""
            attachments.append((part.get_filename() or "attachment", part.get_content_type(), bytes(data)))
        except Exception as error:  # one unreadable attachment must not lose the message
            notes.append(f"Attachment {number} could not be read ({type(error).__name__}) and was left out.")
    sender = email.utils.parseaddr(_header(message, "from"))[1] or mail_from
    message_id = _header(message, "message-id")
    source = (
        f"mail:{hashlib.sha256(message_id.encode()).hexdigest()[:40]}"
        if message_id
        else f"raw:{hashlib.sha256(raw).hexdigest()[:40]}"
    )
    payload: dict[str, Any] = {
        "subject": _header(message, "subject"),
        "sender": sender,
        "to": _header(message, "to"),
        "text": text.strip(),
        "message_id": message_id,
        "date": _header(message, "date"),
        "attachments": [{"name": name, "content_type": kind, "size": len(data)} for name, kind, data in attachments],
    }
    if notes:
        payload["notes"] = notes
    return payload, attachments, source


def email_receive(*, trigger_id: int, raw: bytes, mail_from: str) -> MailReply:
    """Fire an email trigger with one received message, and say what the SMTP server answers.

    Returns only after the firing committed, so a 250 means the run (or its refusal) is recorded. PDF attachments
    become documents (stored as the trigger's creator) for the input schema's document fields, in order; the other
    attachments are listed in the payload. One run per Message-ID."""
    if len(raw) > MAIL_MAX_BYTES:
        return MailReply(552, f"5.3.4 Message larger than {MAIL_MAX_BYTES // (1024 * 1024)} MB")
    with transaction.atomic():
        trigger = Trigger.objects.select_related("workflow", "created_by").filter(pk=trigger_id).first()
        if trigger is None:
            return MailReply(550, "5.1.1 No such trigger address")
        if not trigger.enabled:
            _record(trigger, Outcome.REFUSED, f"A mail from {mail_from or 'an unknown sender'} arrived while paused.")
            return MailReply(550, "5.2.1 This address is paused")
        try:
            payload, attachments, source = mail_payload(raw, mail_from=mail_from)
        except Exception as error:
            # mail_payload touches nothing but the bytes, so whatever it raises is about this message, and sending
            # it again will not help: a permanent refusal, recorded, instead of a 451 the sender would retry for
            # days. (Errors of the database and the rest still escape: the inbound server answers those 451.)
            if not isinstance(error, MailUnreadable):
                logger.exception("email trigger %s: a message could not be parsed", trigger.pk)
            reason = (
                str(error) if isinstance(error, MailUnreadable) else f"it could not be parsed ({type(error).__name__})"
            )
            detail = f"A mail from {mail_from or 'an unknown sender'} was refused: {reason}"
            _record(trigger, Outcome.REFUSED, detail, key=f"raw:{hashlib.sha256(raw).hexdigest()[:40]}")
            return MailReply(554, f"5.6.0 {reason}"[:400])
        version = workflow_version_published_latest(trigger.workflow)
        document_fields = document_field_names(version.input_schema) if version is not None else []
        documents: dict[str, Any] = {}
        stored = []
        pdfs = [
            (name, data)
            for name, kind, data in attachments
            if kind == "application/pdf" or name.lower().endswith(".pdf")
        ]
        for name, data in pdfs[: len(document_fields)] if document_fields else []:
            try:
                stored.append(document_input_value(document_store(actor=trigger.created_by, name=name, data=data)))
            except ValidationFailed as refusal:
                detail = f"The attachment “{name}” could not be read: {refusal.message}"
                _record(trigger, Outcome.REFUSED, detail, key=source)
                return MailReply(554, f"5.6.0 {detail}")
        documents = dict(zip(document_fields, stored, strict=False))
        payload["documents"] = stored
        firing = _fire(trigger, payload=payload, source_key=source, documents=documents)
    if firing.outcome == Outcome.STARTED:
        return MailReply(250, f"2.0.0 Received: run #{firing.run.pk if firing.run else ''} started")
    if firing.outcome == Outcome.DUPLICATE:
        return MailReply(250, "2.0.0 Already received")
    return MailReply(550, f"5.6.0 Not accepted: {firing.detail}"[:400])


# --- schedules -------------------------------------------------------------------------------------------------


def schedule_arm(trigger: Trigger, *, after: datetime) -> ScheduleTimer | None:
    """The unfired row for a schedule's next time after `after` (the existing one if that slot is already armed).

    A slot whose row already fired is passed over (a schedule changed back and forth, or caught up across a
    resume, can meet its own past rows): arming it again would leave the schedule with no unfired row at all."""
    for _ in range(100):
        slots = schedule_next(trigger.config["cron"], trigger.config["timezone"], after)
        if not slots:
            return None
        timer, _ = ScheduleTimer.objects.get_or_create(trigger=trigger, fire_at=slots[0].astimezone(UTC))
        if timer.fired_at is None:
            return timer
        after = slots[0]
    return None


def schedules_fire_due(now: datetime) -> int:
    """Fire every schedule due at `now`, each slot once; returns how many timer rows were taken.

    Each row is claimed (SKIP LOCKED, then a conditional update on `fired_at`) in the transaction that starts
    the run, writes the history and arms the next row: a crash before the commit leaves the row due for the next
    sweep, a commit leaves it fired, so restarting beat or workers never fires a slot twice nor loses one. A slot
    armed while catching up is itself due, so the same pass takes it next, oldest first.

    A row whose firing raises (a time zone gone from the machine's tz database, a bug) is not allowed to stop the
    pass or every later sweep: its claim stands, a "failed" history row says why, and the schedule's next time is
    armed, or the trigger is paused with the reason when no next time can be computed."""
    taken = 0
    while True:
        with transaction.atomic():
            timer = (
                ScheduleTimer.objects.select_for_update(skip_locked=True)
                .filter(fired_at__isnull=True, fire_at__lte=now)
                .order_by("fire_at")
                .first()
            )
            if timer is None:
                return taken
            if not ScheduleTimer.objects.filter(pk=timer.pk, fired_at__isnull=True).update(fired_at=now):
                continue
            taken += 1
            try:
                with transaction.atomic():
                    schedule_fire(timer, now=now)
            except Exception as error:
                logger.exception("schedule timer %s failed", timer.pk)
                _schedule_broken(timer, now=now, error=error)


def _schedule_broken(timer: ScheduleTimer, *, now: datetime, error: Exception) -> None:
    """Record a firing that raised, and keep the schedule going if it can (the caller's transaction)."""
    trigger = Trigger.objects.select_related("workflow").filter(pk=timer.trigger_id).first()
    if trigger is None:
        return
    reason = f"{type(error).__name__}: {error}"[:300]
    try:
        with transaction.atomic():
            armed = schedule_arm(trigger, after=max(timer.fire_at, now))
    except Exception as arm_error:
        armed = None
        reason = f"{reason}; no next time either ({type(arm_error).__name__})"[:400]
    if armed is not None:
        _record(trigger, Outcome.FAILED, f"The scheduled time failed ({reason}); the next time is armed.", now=now)
        return
    Trigger.objects.filter(pk=trigger.pk).update(enabled=False, paused_at=now, updated_at=now)
    _audit(None, "trigger.paused", trigger, {"reason": reason})
    _record(
        trigger,
        Outcome.FAILED,
        f"The schedule cannot compute its times ({reason}); it was paused. Check its time zone and cron, "
        "then resume it.",
        now=now,
    )


# After downtime, missed times are caught up oldest first, each with its own scheduled time, but at most this many:
# beyond it the older ones are recorded as skipped (with a count). A minute schedule after a day's outage would
# otherwise start 1,440 stale runs at once, swamping the workers and every person waiting on them; a day of an
# hourly schedule, or half a year of a weekly one, still runs in full.
CATCH_UP_LIMIT = 24


def schedule_fire(timer: ScheduleTimer, *, now: datetime) -> None:
    """Act on one claimed schedule row (the caller's transaction holds it).

    A missed time still runs when the scheduler comes back (late, with its own scheduled time), and the next
    row is armed right after it, so each missed time after downtime runs once, oldest first, in this same sweep;
    more than CATCH_UP_LIMIT missed: the older ones are one "skipped" history row that counts them. With
    `skip_missed`, a time more than SCHEDULE_GRACE late does not run at all. The run's input gets the scheduled
    time (not the time it ran) as `scheduled_at`, in UTC, and `scheduled_at_local`, in the schedule's zone."""
    trigger = Trigger.objects.select_related("workflow", "created_by").filter(pk=timer.trigger_id).first()
    if trigger is None or not trigger.enabled or trigger.kind != Trigger.Kind.SCHEDULE:
        return
    cron, zone = trigger.config["cron"], trigger.config["timezone"]
    if trigger.config.get("skip_missed"):
        later = schedule_slots_between(cron, zone, timer.fire_at, now)
        latest = later[-1] if later else timer.fire_at
        missed = len(later)  # the timer's own slot and all but the last of the later ones
        if now - latest > SCHEDULE_GRACE:
            _record(
                trigger,
                Outcome.SKIPPED,
                f"{_times(missed + 1)} missed while the scheduler was down; none ran (the trigger skips missed times).",
                now=now,
            )
        else:
            if missed:
                _record(
                    trigger,
                    Outcome.SKIPPED,
                    f"{_times(missed)} missed while the scheduler was down; none ran (the trigger skips missed "
                    f"times); the one due now ({latest.astimezone(UTC):%Y-%m-%d %H:%M} UTC) runs.",
                    now=now,
                )
            _schedule_run(trigger, latest, zone, now=now)
        schedule_arm(trigger, after=max(latest, now))
        return
    slot = timer.fire_at
    if len(schedule_slots_between(cron, zone, slot, now, cap=CATCH_UP_LIMIT)) >= CATCH_UP_LIMIT:
        kept = schedule_slots_latest(cron, zone, slot, now, CATCH_UP_LIMIT)
        if kept and kept[0] > slot:
            before = schedule_slots_between(cron, zone, slot, kept[0] - timedelta(microseconds=1), cap=10_000)
            count = f"More than {len(before):,}" if len(before) >= 10_000 else _times(len(before) + 1)
            _record(
                trigger,
                Outcome.SKIPPED,
                f"{count} missed while the scheduler was down did not run: after downtime at most the "
                f"{CATCH_UP_LIMIT} most recent run, from {kept[0].astimezone(UTC):%Y-%m-%d %H:%M} UTC.",
                now=now,
            )
            slot = kept[0]
    _schedule_run(trigger, slot, zone, now=now)
    # Armed right after this slot, not after now: a missed next time is due at once and the sweep takes it next.
    schedule_arm(trigger, after=slot)


def _schedule_run(trigger: Trigger, slot: datetime, zone: str, *, now: datetime) -> None:
    """Start the run of one scheduled time; a failure is recorded, not raised (the caller arms the next time)."""
    at = slot.astimezone(UTC)
    payload = {
        "scheduled_at": at.isoformat().replace("+00:00", "Z"),
        "scheduled_at_local": slot.astimezone(ZoneInfo(zone)).isoformat(),
        "trigger": trigger.name,
    }
    try:
        with transaction.atomic():
            _fire(trigger, payload=payload, source_key=f"slot:{payload['scheduled_at']}", now=now)
    except Exception as error:  # a bug must not wedge the schedule: record it and arm the next time
        logger.exception("schedule trigger %s failed", trigger.pk)
        _record(trigger, Outcome.FAILED, f"{type(error).__name__}: {error}"[:500], now=now)


# --- events ----------------------------------------------------------------------------------------------------


def event_relay(*, run_id: int) -> int:
    """Start the downstream runs of a finished run (the `runs.trigger_event` task); returns how many firings.

    One transaction per downstream trigger, none holding the finished run's lock. The idempotency key is the
    upstream run's id, so a repeated relay answers with the run it already started (a "duplicate" row)."""
    run = Run.objects.select_related("workflow").filter(pk=run_id).first()
    if run is None or not run.is_finished or run.mode != Run.Mode.LIVE:
        return 0
    triggers = Trigger.objects.select_related("workflow", "created_by", "source_workflow").filter(
        kind=Trigger.Kind.EVENT, enabled=True, source_workflow_id=run.workflow_id
    )
    fired = 0
    for trigger in triggers:
        if run.status not in trigger.config.get("outcomes", ["succeeded"]):
            continue
        with transaction.atomic():
            if not has_object_perm(trigger.created_by, "workflows.view_workflow", run.workflow):
                _refuse(
                    trigger,
                    f"{trigger.created_by.display_name} may no longer see “{run.workflow.name}”.",
                    403,
                    key=f"run:{run.pk}",
                )
            else:
                payload = {
                    "run": run.pk,
                    "workflow": run.workflow.slug,
                    "status": run.status,
                    "output": run.output if isinstance(run.output, dict) else {"value": run.output},
                    "inputs": run.inputs,
                    "error": run.error,
                }
                _fire(trigger, payload={**payload, **_flat(payload["output"])}, source_key=f"run:{run.pk}")
            fired += 1
    return fired


def _flat(output: dict[str, Any]) -> dict[str, Any]:
    """The upstream output's fields at the top of the payload, so that without a mapping a downstream input named
    like an output field gets its value; the payload's own keys win."""
    reserved = {"run", "workflow", "status", "output", "inputs", "error"}
    return {key: value for key, value in output.items() if key not in reserved}


def workflows_for_event_source(user: AnyUser, workflow: Workflow) -> QuerySet[Workflow]:
    """The workflows `user` may choose as an event trigger's source for `workflow`."""
    return restrict(Workflow.objects.exclude(pk=workflow.pk), user, "workflows.view_workflow").order_by("name")
