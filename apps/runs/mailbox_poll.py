"""Email triggers that read a mailbox: polling an IMAP folder and firing the trigger once per new message.

An email trigger whose config names a mailbox connection (`{"connection": "<name>"}`) has no inbound address;
instead the beat schedule calls `mailbox_polls_due` every AIOS_MAILBOX_POLL_SECONDS and sends one `runs.mailbox_poll`
task per trigger it returns, and each task calls `mailbox_poll`. The contract, in the house's terms:

- Postgres says what is due. A `MailboxPoll` row per trigger holds the next poll time and a lease: a poll starts
  only by a conditional update that takes the lease, so two deliveries of the task (or two beats) never poll one
  trigger at the same time; a poll whose worker died is taken over when its lease runs out.
- Each message is handled in this order: fetch it without marking it (BODY.PEEK[]), fire the trigger
  (`apps.runs.triggers.email_receive`, which commits the run or the refusal and its history row), mark it \\Seen,
  and only then move the cursor past its UID. A crash anywhere before the \\Seen leaves the message unread and the
  cursor before it, so the next poll reads it again; its Message-ID makes that a "duplicate" in the history, never
  a second run.
- The cursor is (UIDVALIDITY, last UID handled) for one (connection, host, user, folder): a poll searches only
  `UNSEEN UID <last+1>:*`. When the server's UIDVALIDITY changes (the folder was rebuilt, its UIDs renumbered),
  the poll scans every unread message again, which the Message-ID keeps harmless.
- Every poll checks again that the trigger's workflow may use the connection (the connectors app's rule, as
  `connection_for_step` applies it for steps), and connects only to an address the outbound policy allows.
- What goes wrong (a refused login, a missing folder, a host the policy refuses, a connection withdrawn) is the
  poll's outcome on the trigger's page and a history row, written when the problem first appears or changes, not at
  every poll; failed polls back off (twice the wait each time, at most BACKOFF_MAX_SECONDS). A paused trigger is
  not polled; mail that arrives meanwhile waits in the mailbox, unread, for the trigger to resume.
- A message larger than MAIL_MAX_BYTES (the inbound SMTP server's limit) is not downloaded: a history row says so.
"""

from __future__ import annotations

import contextlib
import imaplib
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from celery import current_app
from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from apps.accounts.models import User
from apps.audit.services import audit_record
from apps.connectors.imap import (
    MailboxAddressRefused,
    MailboxUnreachable,
    imap_address,
    imap_connect,
    imap_quote,
    imap_reason,
    imap_reason_data,
)
from apps.connectors.models import Connection
from apps.connectors.rules import workflow_uses_connection
from apps.connectors.runtime import ConnectionUnavailable, ResolvedConnection, connection_for_step, redact
from apps.connectors.selectors import connections_usable_by
from apps.core.exceptions import ApplicationError, Conflict, Forbidden
from apps.runs.models import MailboxPoll, TriggerFiring
from apps.runs.triggers import MAIL_MAX_BYTES, email_receive, trigger_history_record
from apps.workflows.models import Trigger, Workflow
from apps.workflows.selectors import workflow_can_edit
from apps.workflows.triggers import email_mailbox_name

logger = logging.getLogger(__name__)

Outcome = TriggerFiring.Outcome

MAILBOX_POLL_TASK = "runs.mailbox_poll"
MAILBOXES_POLL_TASK = "runs.mailboxes_poll"
# How long a poll owns its trigger before another may take over; renewed before each message, and each message
# costs at most a few IMAP round trips of IMAP_TIMEOUT_SECONDS plus one firing.
LEASE_SECONDS = 300
IMAP_TIMEOUT_SECONDS = 30.0
# Messages handled per poll: a mailbox with a backlog is worked through over several polls, due again at once,
# so one trigger never holds a worker for long.
MAX_MESSAGES_PER_POLL = 50
BACKOFF_MAX_SECONDS = 30 * 60
_FETCH_ITEM = re.compile(rb"UID (\d+)|RFC822\.SIZE (\d+)")


@dataclass
class PollOutcome:
    """What one poll did: `ok` false when it could not finish (its `message` says why, in words for the trigger's
    page), counts of messages that started a run, were repeats, or were refused, and whether more are waiting."""

    ok: bool
    message: str
    started: int = 0
    duplicates: int = 0
    refused: int = 0
    more: bool = False
    runs: list[int] = field(default_factory=list)


class _PollStopped(Exception):
    """The poll cannot go on; `message` says why. `outcome` is the history row's: "failed" (the mailbox), "refused"
    (a rule), or "" for none (another poll took over and tells its own story)."""

    def __init__(self, message: str, outcome: str = Outcome.FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.outcome = outcome


# --- reads for the pages -----------------------------------------------------------------------------------------


def poll_interval_seconds() -> float:
    return float(getattr(settings, "AIOS_MAILBOX_POLL_SECONDS", 60.0))


def mailbox_choices_for(user: User, workflow: Workflow) -> list[Connection]:
    """The mailbox connections an email trigger of `workflow` may read, as `user` sets it up: enabled, usable by
    her, and usable by the workflow (its team's right, which every poll checks again)."""
    usable = connections_usable_by(user, "mailbox").filter(enabled=True)
    return [connection for connection in usable if workflow_uses_connection(workflow.pk, connection)]


def mailbox_state_for(trigger: Trigger) -> dict[str, Any] | None:
    """A mailbox trigger's page: the connection it reads (None when it has been deleted), its folder, the last
    poll's time, outcome and message, and when the next is due. None for a trigger with an inbound address."""
    name = email_mailbox_name(trigger.config) if trigger.kind == Trigger.Kind.EMAIL else ""
    if not name:
        return None
    poll = MailboxPoll.objects.filter(trigger=trigger).first()
    return {
        "name": name,
        "connection": Connection.objects.filter(name=name, kind="mailbox").first(),
        "poll": poll,
        "every": _duration_words(poll_interval_seconds()),
    }


def _duration_words(seconds: float) -> str:
    if seconds < 90:
        return f"{round(seconds)} seconds"
    if seconds < 5400:
        return f"{round(seconds / 60)} minutes"
    return f"{round(seconds / 3600)} hours"


# --- what is due ------------------------------------------------------------------------------------------------


def _mailbox_triggers() -> QuerySet[Trigger]:
    return Trigger.objects.filter(kind=Trigger.Kind.EMAIL, enabled=True, config__has_key="connection")


def _due_cutoff(now: datetime) -> datetime:
    # Beat ticks every interval and a poll sets its next time an interval after it started, a little after the
    # tick: without this slack every second tick would find it not yet due, halving the pace.
    return now + timedelta(seconds=poll_interval_seconds() / 4)


def mailbox_polls_due(now: datetime | None = None) -> list[int]:
    """The ids of enabled mailbox triggers due for a poll and not being polled (the beat task sends one
    `runs.mailbox_poll` per id). A trigger polled for the first time gets its row here, due at once."""
    now = now or timezone.now()
    missing = _mailbox_triggers().filter(mailbox_poll__isnull=True).values_list("pk", flat=True)
    MailboxPoll.objects.bulk_create([MailboxPoll(trigger_id=pk, due_at=now) for pk in missing], ignore_conflicts=True)
    return list(
        MailboxPoll.objects.filter(trigger__in=_mailbox_triggers(), due_at__lte=_due_cutoff(now))
        .filter(Q(polling_until__isnull=True) | Q(polling_until__lt=now))
        .order_by("due_at")
        .values_list("trigger_id", flat=True)
    )


@transaction.atomic
def mailbox_poll_request(*, actor: User, trigger: Trigger, now: datetime | None = None) -> None:
    """Check now: make the trigger's poll due at once and send it after the commit (a lost message changes
    nothing: the row is due, and the next tick sends it again). Refused (Conflict) for a paused trigger or one
    with an inbound address; only those who may change the workflow ask."""
    if not workflow_can_edit(actor, trigger.workflow):
        raise Forbidden("Only those who may change this workflow manage its triggers.")
    if trigger.kind != Trigger.Kind.EMAIL or not email_mailbox_name(trigger.config):
        raise Conflict("Only an email trigger that reads a mailbox can be checked.")
    if not Trigger.objects.filter(pk=trigger.pk, enabled=True).exists():
        raise Conflict(f"“{trigger.name}” is paused: resume it to read its mailbox.")
    now = now or timezone.now()
    MailboxPoll.objects.bulk_create([MailboxPoll(trigger_id=trigger.pk, due_at=now)], ignore_conflicts=True)
    MailboxPoll.objects.filter(trigger_id=trigger.pk).update(due_at=now, failures=0)
    audit_record(actor=actor, verb="trigger.check_requested", target=trigger, data={"kind": trigger.kind})
    transaction.on_commit(lambda: _send_poll(trigger.pk))


def _send_poll(trigger_id: int) -> None:
    try:
        current_app.send_task(MAILBOX_POLL_TASK, args=[trigger_id], queue="connectors")
    except Exception:  # the broker is away: the row is due, the next tick sends the poll
        logger.warning("could not send the poll of trigger %s; the next tick will", trigger_id, exc_info=True)


# --- one poll -----------------------------------------------------------------------------------------------------


def _claim(trigger_id: int, now: datetime, *, force: bool) -> int | None:
    """Take the trigger's lease by a conditional update; the lease token, or None when another poll holds it or
    (unless `force`) it is not due. Two claims at once: the second waits for the first's row lock, then finds the
    lease taken and changes nothing."""
    MailboxPoll.objects.bulk_create([MailboxPoll(trigger_id=trigger_id, due_at=now)], ignore_conflicts=True)
    with transaction.atomic():
        rows = MailboxPoll.objects.filter(trigger_id=trigger_id).filter(
            Q(polling_until__isnull=True) | Q(polling_until__lt=now)
        )
        if not force:
            rows = rows.filter(due_at__lte=_due_cutoff(now))
        if not rows.update(polling_until=now + timedelta(seconds=LEASE_SECONDS), lease_token=F("lease_token") + 1):
            return None
        return int(MailboxPoll.objects.filter(trigger_id=trigger_id).values_list("lease_token", flat=True)[0])


def _held(trigger_id: int, token: int) -> QuerySet[MailboxPoll]:
    """The poll row while this poll's lease is current (empty once another poll has taken it over)."""
    return MailboxPoll.objects.filter(trigger_id=trigger_id, lease_token=token)


def mailbox_poll(*, trigger_id: int, now: datetime | None = None, force: bool = False) -> PollOutcome | None:
    """Poll the mailbox of email trigger `trigger_id` once; None when there was nothing to do (the trigger is
    gone, paused, reads no mailbox, is not due, or another poll holds it). `force` polls before it is due.

    Never raises for what the mailbox or the rules do: the outcome is recorded on the poll row (and, for a new
    problem, in the trigger's history) and returned."""
    now = now or timezone.now()
    trigger = Trigger.objects.select_related("workflow", "created_by").filter(pk=trigger_id).first()
    if trigger is None or trigger.kind != Trigger.Kind.EMAIL or not trigger.enabled:
        return None
    name = email_mailbox_name(trigger.config)
    if not name:
        return None
    token = _claim(trigger_id, now, force=force)
    if token is None:
        return None
    poll = MailboxPoll.objects.get(trigger_id=trigger_id)
    outcome: PollOutcome
    try:
        outcome = _poll(trigger, name, poll, token)
    except _PollStopped as stopped:
        outcome = PollOutcome(ok=False, message=stopped.message)
        if stopped.outcome and (poll.ok is not False or poll.message != stopped.message):  # new: into the history
            trigger_history_record(trigger, stopped.outcome, stopped.message)
    except Exception as error:  # a bug must not wedge the trigger: record it, back off, poll again later
        logger.exception("mailbox poll of trigger %s failed", trigger_id)
        outcome = PollOutcome(ok=False, message=f"The poll failed: {type(error).__name__}: {error}"[:500])
        trigger_history_record(trigger, Outcome.FAILED, outcome.message)
    _finish(trigger_id, token, outcome, started=now)
    return outcome


def _finish(trigger_id: int, token: int, outcome: PollOutcome, *, started: datetime) -> None:
    """Record the outcome and the next due time, and give the lease back (only if still ours)."""
    failures = 0
    wait = poll_interval_seconds()
    if not outcome.ok:
        failures = (
            MailboxPoll.objects.filter(trigger_id=trigger_id).values_list("failures", flat=True).first() or 0
        ) + 1
        wait = min(wait * 2 ** (failures - 1), max(BACKOFF_MAX_SECONDS, wait))
    due = timezone.now() if outcome.more else started + timedelta(seconds=wait)
    _held(trigger_id, token).update(
        polling_until=None,
        polled_at=timezone.now(),
        ok=outcome.ok,
        message=outcome.message[:500],
        failures=failures,
        due_at=due,
    )


def _poll(trigger: Trigger, name: str, poll: MailboxPoll, token: int) -> PollOutcome:
    try:
        resolved = connection_for_step(name, kind="mailbox", workflow_id=trigger.workflow_id)
    except ConnectionUnavailable as refusal:
        raise _PollStopped(f"Not polled: {refusal.message}", Outcome.REFUSED) from None
    needles = resolved.secret_values()
    try:
        return _poll_mailbox(trigger, resolved, poll, token)
    except _PollStopped as stopped:
        # A server may echo what it was sent: nothing of a secret reaches the page, the history or the audit.
        raise _PollStopped(str(redact(stopped.message, needles))[:500], stopped.outcome) from None


def _poll_mailbox(trigger: Trigger, resolved: ResolvedConnection, poll: MailboxPoll, token: int) -> PollOutcome:
    config = resolved.config
    host, port, folder = str(config["host"]), int(config["port"]), str(config.get("folder") or "INBOX")
    source = f"{resolved.name}|{host}|{port}|{config.get('username', '')}|{folder}"[:400]
    try:
        address = imap_address(host, port, resolved.destinations)
    except ApplicationError as refusal:
        raise _PollStopped(f"Not polled: {refusal.message}", Outcome.REFUSED) from None
    try:
        client = imap_connect(host, address, port, ssl_on=bool(config.get("ssl", True)), timeout=IMAP_TIMEOUT_SECONDS)
    except MailboxAddressRefused as refusal:
        raise _PollStopped(f"Not polled: {refusal.message}", Outcome.REFUSED) from None
    except MailboxUnreachable as error:
        raise _PollStopped(error.message) from None
    try:
        try:
            client.login(str(config["username"]), resolved.secrets.get("password", ""))
        except imaplib.IMAP4.error as error:
            raise _PollStopped(f"{host} refused the login: {imap_reason(error)}") from None
        try:
            quoted = imap_quote(folder)
        except ApplicationError as refusal:
            raise _PollStopped(f"The folder “{folder}” cannot be opened: {refusal.message}", Outcome.REFUSED) from None
        status, data = client.select(quoted)
        if status != "OK":
            raise _PollStopped(f"{host} refused the folder “{folder}”: {imap_reason_data(data, status)}")
        uidvalidity = _number(client.response("UIDVALIDITY")[1])
        last_uid, note = poll.last_uid, ""
        if poll.source != source or uidvalidity is None or uidvalidity != poll.uidvalidity:
            if poll.source == source and poll.uidvalidity is not None:
                note = " The folder's message numbers changed (UIDVALIDITY), so every unread message was checked."
            last_uid = 0
            _held(trigger.pk, token).update(source=source, uidvalidity=uidvalidity, last_uid=0)
        uids = _search(client, last_uid)
        outcome = _handle(trigger, client, uids[:MAX_MESSAGES_PER_POLL], token, folder)
        outcome.more = len(uids) > MAX_MESSAGES_PER_POLL
        outcome.message = _summary(outcome, folder) + note
        return outcome
    except (OSError, imaplib.IMAP4.abort) as error:
        raise _PollStopped(f"{host}:{port} closed the IMAP session: {imap_reason(error)}") from None
    except imaplib.IMAP4.error as error:
        raise _PollStopped(f"{host} answered with an error: {imap_reason(error)}") from None
    finally:
        with contextlib.suppress(Exception):  # the outcome is known: a failed goodbye changes nothing
            client.logout()


def _search(client: imaplib.IMAP4, last_uid: int) -> list[int]:
    """The UIDs of unread messages after `last_uid`, oldest first. `n:*` always includes the newest message, even
    when its UID is below n (RFC 3501 section 6.4.8), hence the filter."""
    criteria = ("UNSEEN", "UID", f"{last_uid + 1}:*") if last_uid else ("UNSEEN",)
    status, data = client.uid("SEARCH", *criteria)
    if status != "OK":
        raise _PollStopped(f"The server refused the search: {imap_reason_data(data, status)}")
    found = {int(part) for line in data if isinstance(line, bytes) for part in line.split() if part.isdigit()}
    return sorted(uid for uid in found if uid > last_uid)


def _sizes(client: imaplib.IMAP4, uids: list[int]) -> dict[int, int]:
    if not uids:
        return {}
    status, data = client.uid("FETCH", ",".join(map(str, uids)), "(RFC822.SIZE)")
    if status != "OK":
        raise _PollStopped(f"The server refused to list the messages: {imap_reason_data(data, status)}")
    sizes: dict[int, int] = {}
    for line in data:
        text = line[0] if isinstance(line, tuple) else line
        if not isinstance(text, bytes):
            continue
        uid = size = None
        for match in _FETCH_ITEM.finditer(text):
            uid = int(match.group(1)) if match.group(1) else uid
            size = int(match.group(2)) if match.group(2) else size
        if uid is not None and size is not None:
            sizes[uid] = size
    return sizes


def _fetch(client: imaplib.IMAP4, uid: int) -> bytes | None:
    """The whole message, without setting \\Seen (BODY.PEEK[]); None when the server no longer has it."""
    status, data = client.uid("FETCH", str(uid), "(BODY.PEEK[])")
    if status != "OK":
        raise _PollStopped(f"The server refused to send message {uid}: {imap_reason_data(data, status)}")
    for part in data:
        if isinstance(part, tuple) and len(part) == 2 and b"BODY[]" in part[0].upper():
            return bytes(part[1])
    return None


def _handle(trigger: Trigger, client: imaplib.IMAP4, uids: list[int], token: int, folder: str) -> PollOutcome:
    outcome = PollOutcome(ok=True, message="")
    sizes = _sizes(client, uids)
    for uid in uids:
        # Before each message: is this still our poll, and is the trigger still on? A pause stops the poll here,
        # leaving the rest unread for when it resumes.
        lease = timezone.now() + timedelta(seconds=LEASE_SECONDS)
        if not _held(trigger.pk, token).update(polling_until=lease):
            raise _PollStopped("Another poll took over this mailbox.", outcome="")
        if not Trigger.objects.filter(pk=trigger.pk, enabled=True).exists():
            outcome.message = "Paused during the poll."
            return outcome
        size = sizes.get(uid)
        too_large = size is not None and size > MAIL_MAX_BYTES
        raw = None if too_large else _fetch(client, uid)
        if raw is None and not too_large:
            continue  # expunged since the search: nothing to read, nothing to mark
        if raw is None or len(raw) > MAIL_MAX_BYTES:
            megabytes = (size if raw is None else len(raw)) or 0
            trigger_history_record(
                trigger,
                Outcome.REFUSED,
                f"Message {uid} in “{folder}” is {megabytes / 1048576:.1f} MB, larger than the "
                f"{MAIL_MAX_BYTES // 1048576} MB limit: not read.",
            )
            outcome.refused += 1
        else:
            try:
                reply = email_receive(trigger_id=trigger.pk, raw=raw, mail_from="")  # committed when it returns
            except (DatabaseError, OSError):
                raise  # the database or the document store is away: the message stays unread for the next poll
            except Exception as error:
                # One message the product cannot take (a bug, a part nothing can decode) must not stop every
                # later one: it is recorded, marked read and passed, like a refused one.
                logger.exception("mailbox trigger %s: message %s could not be taken", trigger.pk, uid)
                trigger_history_record(
                    trigger,
                    Outcome.REFUSED,
                    f"Message {uid} in “{folder}” could not be read ({type(error).__name__}): marked read and "
                    "passed over; see the worker's log.",
                )
                outcome.refused += 1
                reply = None
            if reply is None:
                pass
            elif reply.code == 550 and "paused" in reply.text:
                outcome.message = "Paused during the poll."
                return outcome
            elif reply.code != 250:
                outcome.refused += 1
            elif reply.text.startswith("2.0.0 Already"):
                outcome.duplicates += 1
            else:
                outcome.started += 1
                run = re.search(r"#(\d+)", reply.text)
                if run:
                    outcome.runs.append(int(run.group(1)))
        # Marked only now that the firing is committed; the cursor moves only once the mark is made. A lost
        # connection here leaves both as they were, and the next poll reads this message again (a duplicate).
        status, data = client.uid("STORE", str(uid), "+FLAGS.SILENT", "(\\Seen)")
        if status != "OK":
            raise _PollStopped(f"The server refused to mark message {uid} as read: {imap_reason_data(data, status)}")
        _held(trigger.pk, token).filter(last_uid__lt=uid).update(last_uid=uid)
    return outcome


def _summary(outcome: PollOutcome, folder: str) -> str:
    if outcome.message:
        return outcome.message
    total = outcome.started + outcome.duplicates + outcome.refused
    if not total:
        return f"No new mail in “{folder}”."
    parts = []
    if outcome.started:
        parts.append(f"{outcome.started} run{'s' if outcome.started != 1 else ''} started")
    if outcome.duplicates:
        parts.append(f"{outcome.duplicates} already received")
    if outcome.refused:
        parts.append(f"{outcome.refused} refused (see the history)")
    more = " More are waiting: the next poll goes on." if outcome.more else ""
    return f"{total} new message{'s' if total != 1 else ''} in “{folder}”: {', '.join(parts)}.{more}"


def _number(data: list[Any]) -> int | None:
    for item in data or []:
        if isinstance(item, bytes) and item.strip().isdigit():
            return int(item.strip())
    return None
