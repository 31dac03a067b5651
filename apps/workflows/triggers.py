"""Triggers' rules that need no run: checking a trigger's settings, reading schedules, signing webhooks, and
turning a firing's payload into run inputs.

Starting runs from triggers, their history and the pages are the runs app's (apps/runs/triggers.py): it sits
above this one. Everything here is pure (no database), so the pages, the API and the firing code share it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter  # type: ignore[import-untyped]

from apps.steps.expressions import ExpressionError, cel_check, cel_evaluate

KINDS = ("form", "schedule", "webhook", "email", "event", "chat")
CHAT_TITLE_MAX = 120
CHAT_GREETING_MAX = 1000
EVENT_OUTCOMES = ("succeeded", "failed", "cancelled")

# Webhook requests: the signed timestamp may be this far from the server's clock, either way.
REPLAY_WINDOW_SECONDS = 300
WEBHOOK_MAX_BYTES = 256 * 1024
SIGNATURE_PREFIX = "sha256="

MAX_MAPPING_FIELDS = 50
# How far ahead a schedule is searched for its next firing (a cron like "0 0 30 2 *" never fires).
_SEARCH_YEARS = 5
_MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
_DAYS = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]


def token_new() -> str:
    """The unguessable part of a webhook URL and an inbound mail address: 160 random bits, lower-case letters and
    digits only, so it survives mail systems that fold the case of an address's local part."""
    return "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(32))


def secret_new() -> str:
    """A webhook signing secret (256 random bits), shown to its owner once and stored encrypted."""
    return "whsec_" + secrets.token_urlsafe(32)


# --- schedules -----------------------------------------------------------------------------------------------


def timezone_error(name: str) -> str | None:
    """None when `name` is an IANA time zone this machine knows (Europe/Berlin, UTC), else why not."""
    if not name:
        return "Choose a time zone, such as Europe/Berlin or UTC."
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return f'"{name}" is not a time zone name this server knows; use an IANA name such as Europe/Berlin.'
    return None


def cron_error(expression: str) -> str | None:
    """None when `expression` is a 5-field cron expression, else the reason in words."""
    fields = expression.split()
    if len(fields) != 5:
        return (
            f"A schedule has 5 fields (minute, hour, day of month, month, day of week), e.g. “0 8 * * 1” for "
            f"Mondays at 08:00; this has {len(fields)}."
        )
    if not croniter.is_valid(expression):
        for name, value, low, high in zip(
            ("minute", "hour", "day of month", "month", "day of week"),
            fields,
            (0, 0, 1, 1, 0),
            (59, 23, 31, 12, 7),
            strict=True,
        ):
            if re.search(r"[^0-9*,/\-A-Za-z?LW#]", value):
                return f"The {name} field “{value}” has characters a schedule does not use."
            for number in re.findall(r"\d+", value):
                if not low <= int(number) <= high and "/" not in value.split(number)[0][-1:]:
                    return f"The {name} field “{value}” is out of range: use {low} to {high}."
        return f"“{expression}” is not a cron expression this server can read."
    return None


def _slots(expression: str, zone: ZoneInfo, after: datetime) -> Iterator[datetime]:
    """Firing times after `after` (aware), in `zone`, each wall-clock time once.

    When clocks fall back, a wall time like 02:30 happens twice; a schedule with a fixed hour fires at the first
    one only (what cron does). In the spring gap the skipped wall time fires at the first valid instant after it.
    """
    fixed_hour = expression.split()[1] != "*" and not expression.split()[1].startswith("*/")
    it = croniter(expression, after.astimezone(zone))
    limit = after + timedelta(days=366 * _SEARCH_YEARS)
    while True:
        try:
            slot: datetime = it.get_next(datetime)
        except CroniterBadDateError:  # no such date within croniter's own search limit ("0 0 30 2 *")
            return
        if slot > limit:
            return
        if fixed_hour:
            first = slot.replace(tzinfo=None).replace(tzinfo=zone, fold=0)
            # Compared in UTC: two datetimes with the same zone compare by wall time, which is the same here.
            if first.utcoffset() != slot.utcoffset() and first.astimezone(UTC) < slot.astimezone(UTC):
                continue
        yield slot


def schedule_next(expression: str, timezone_name: str, after: datetime, count: int = 1) -> list[datetime]:
    """The next `count` firing times strictly after `after`, as aware datetimes in the schedule's zone."""
    found: list[datetime] = []
    for slot in _slots(expression, ZoneInfo(timezone_name), after):
        found.append(slot)
        if len(found) >= count:
            break
    return found


def schedule_slots_between(
    expression: str, timezone_name: str, start: datetime, end: datetime, cap: int = 10_000
) -> list[datetime]:
    """Firing times t with start < t <= end (at most `cap`), oldest first."""
    found: list[datetime] = []
    for slot in _slots(expression, ZoneInfo(timezone_name), start):
        if slot > end or len(found) >= cap:
            break
        found.append(slot)
    return found


def schedule_slots_latest(
    expression: str, timezone_name: str, start: datetime, end: datetime, count: int
) -> list[datetime]:
    """The newest `count` firing times t with start < t <= end, oldest first.

    Searched backwards in growing windows from `end`, so a long gap (a minute schedule after a month's downtime)
    costs about as many slots as are returned, not every slot since `start`."""
    for span in (timedelta(hours=1), timedelta(days=1), timedelta(days=7), timedelta(days=62), timedelta(days=732)):
        low = max(start, end - span)
        found = schedule_slots_between(expression, timezone_name, low, end, cap=100_000)
        if len(found) >= count or low == start:
            return found[-count:]
    return schedule_slots_between(expression, timezone_name, start, end, cap=1_000_000)[-count:]


def _list_words(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _day_words(value: str) -> str | None:
    names = {str(i): day for i, day in enumerate(_DAYS)} | {"7": "Sunday"}
    names |= {day[:3].lower(): day for day in _DAYS}
    parts = []
    for part in value.lower().split(","):
        if "-" in part and "/" not in part:
            low, high = part.split("-", 1)
            if low not in names or high not in names:
                return None
            parts.append(f"{names[low]} to {names[high]}")
        elif part in names:
            parts.append(names[part])
        else:
            return None
    return _list_words(parts)


def schedule_describe(expression: str) -> str:
    """The schedule in words ("Every Monday at 08:00"), for the common shapes; otherwise the expression quoted."""
    fallback = f"On the cron schedule “{expression}”"
    fields = expression.split()
    if len(fields) != 5:
        return fallback
    minute, hour, dom, month, dow = fields
    if (minute, hour, dom, month, dow) == ("*", "*", "*", "*", "*"):
        return "Every minute"
    if minute.startswith("*/") and minute[2:].isdigit() and (hour, dom, month, dow) == ("*", "*", "*", "*"):
        return f"Every {int(minute[2:])} minutes"
    if minute.isdigit() and (hour, dom, month, dow) == ("*", "*", "*", "*"):
        return f"Every hour at {int(minute):02d} minutes past"
    if not minute.isdigit() or not all(part.isdigit() for part in hour.split(",")):
        return fallback
    times = _list_words([f"{int(h):02d}:{int(minute):02d}" for h in hour.split(",")])
    if dow != "*" and dom == "*":
        days = _day_words(dow)
        if days is None:
            return fallback
        when = "Every weekday" if days == "Monday to Friday" else f"Every {days}"
    elif dom != "*" and dow == "*" and all(part.isdigit() for part in dom.split(",")):
        when = f"On day {_list_words(dom.split(','))} of the month"
    elif dom == "*" and dow == "*":
        when = "Every day"
    else:
        return fallback
    if month != "*":
        if not all(part.isdigit() and 1 <= int(part) <= 12 for part in month.split(",")):
            return fallback
        when += f" in {_list_words([_MONTHS[int(part) - 1] for part in month.split(',')])}"
    return f"{when} at {times}"


# --- webhooks ------------------------------------------------------------------------------------------------


def webhook_signature(secret: str, timestamp: str, body: bytes, *, idempotency_key: str = "") -> str:
    """The signature a sender puts in X-AIOS-Signature: "sha256=" + hex HMAC-SHA256 of
    "<timestamp>.<idempotency key>.<body>" (the key as sent in the Idempotency-Key header, "" when none is sent).

    The key is signed because it decides which run a request gets: were it outside the signature, anyone holding
    a captured request could resend it with a fresh key, inside the replay window, and start a run each time."""
    material = timestamp.encode() + b"." + idempotency_key.encode() + b"." + body
    return SIGNATURE_PREFIX + hmac.new(secret.encode(), material, hashlib.sha256).hexdigest()


def webhook_signature_problem(
    *,
    secret: str,
    timestamp: str,
    signature: str,
    body: bytes,
    now: float,
    idempotency_key: str = "",
    window: int = REPLAY_WINDOW_SECONDS,
) -> str | None:
    """None when the request is signed with `secret` and its timestamp is within `window` seconds of `now`
    (unix seconds); else a short reason for the sender. The comparison takes constant time."""
    if not timestamp or not signature:
        return "The X-AIOS-Timestamp and X-AIOS-Signature headers are required."
    if not timestamp.isdigit() or len(timestamp) > 12:
        return "X-AIOS-Timestamp must be the time in whole unix seconds."
    expected = webhook_signature(secret, timestamp, body, idempotency_key=idempotency_key)
    if not hmac.compare_digest(expected.encode(), signature.strip().encode()):
        return "The signature does not match the timestamp, Idempotency-Key and body."
    skew = now - int(timestamp)
    if skew > window:
        return f"The timestamp is {int(skew)} s old; requests older than {window} s are refused."
    if skew < -window:
        return f"The timestamp is {int(-skew)} s in the future; check the sender's clock."
    return None


# --- configuration -------------------------------------------------------------------------------------------


@dataclass
class TriggerSettings:
    """A trigger's checked settings, as the create and update services store them."""

    config: dict[str, Any]
    inputs: dict[str, str]


def trigger_config_clean(kind: str, config: Any, inputs: Any) -> tuple[TriggerSettings, dict[str, list[str]]]:
    """The kind's settings, checked: (settings, {}) when valid, else (partial settings, field → messages).

    form: `intro` and `next_steps` (text shown on the form page and after submitting). schedule: `cron`,
    `timezone`, `skip_missed`. event: `outcomes` (some of succeeded, failed, cancelled; default succeeded); the
    source workflow itself is checked by the service, which can read it. webhook: nothing. email: `connection`,
    the name of a mailbox connection to poll, or nothing for the inbound address (whether the connection exists
    and the workflow may use it is the service's check, which can read them). chat: `title` (required) and
    `greeting`; that the workflow takes a `message` is the service's check (chat_input_schema_problem).
    `inputs` maps run input field names to CEL expressions over `payload`.
    """
    errors: dict[str, list[str]] = {}
    config = config if isinstance(config, dict) else {}
    clean: dict[str, Any] = {}
    if kind not in KINDS:
        errors["kind"] = [f"Choose one of {', '.join(KINDS)}."]
    elif kind == "form":
        for key, limit in (("intro", 2000), ("next_steps", 2000)):
            text = str(config.get(key) or "").strip()
            if len(text) > limit:
                errors[key] = [f"At most {limit} characters."]
            clean[key] = text[:limit]
    elif kind == "schedule":
        cron = " ".join(str(config.get("cron") or "").split())
        zone = str(config.get("timezone") or "").strip()
        problem = cron_error(cron) if cron else "Give the schedule as a cron expression, e.g. “0 8 * * 1”."
        if problem:
            errors["cron"] = [problem]
        zone_problem = timezone_error(zone)
        if zone_problem:
            errors["timezone"] = [zone_problem]
        if not problem and not zone_problem and not schedule_next(cron, zone, datetime.now(ZoneInfo(zone))):
            errors["cron"] = [f"“{cron}” never fires in the next {_SEARCH_YEARS} years."]
        clean.update(cron=cron, timezone=zone, skip_missed=bool(config.get("skip_missed")))
    elif kind == "event":
        outcomes = config.get("outcomes") or ["succeeded"]
        if isinstance(outcomes, str):
            outcomes = [outcomes]
        if not isinstance(outcomes, list) or not outcomes or set(map(str, outcomes)) - set(EVENT_OUTCOMES):
            errors["outcomes"] = [f"Choose among {', '.join(EVENT_OUTCOMES)}."]
            outcomes = ["succeeded"]
        clean["outcomes"] = [outcome for outcome in EVENT_OUTCOMES if outcome in outcomes]
    # --- email: the inbound address, or a mailbox connection to poll (apps/runs/mailbox_poll.py) ---
    elif kind == "email":
        clean, email_errors = _email_config_clean(config)
        errors.update(email_errors)
    # --- chat: the assistant's page (apps/assistants/chat_views.py); the input schema is the service's check ---
    elif kind == "chat":
        title = " ".join(str(config.get("title") or "").split())
        greeting = str(config.get("greeting") or "").strip()
        if not title:
            errors["title"] = ["Give the assistant a title, such as “Remote-work assistant”."]
        elif len(title) > CHAT_TITLE_MAX:
            errors["title"] = [f"At most {CHAT_TITLE_MAX} characters."]
        if len(greeting) > CHAT_GREETING_MAX:
            errors["greeting"] = [f"At most {CHAT_GREETING_MAX} characters."]
        clean.update(title=title[:CHAT_TITLE_MAX], greeting=greeting[:CHAT_GREETING_MAX])
    mapping, mapping_errors = inputs_mapping_clean(inputs)
    if mapping_errors:
        errors["inputs"] = mapping_errors
    return TriggerSettings(config=clean, inputs=mapping), errors


def chat_input_schema_problem(schema: Any) -> str | None:
    """None when a workflow with this published input schema can back a chat assistant: a string `message` field
    and, if it has one, an array `history` (the conversation so far), and no other required field; else why not."""
    schema = schema if isinstance(schema, dict) else {}
    properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    message = properties.get("message")
    if not isinstance(message, dict) or message.get("type") != "string":
        return "A chat assistant needs a workflow whose published input has a text field called “message”."
    history = properties.get("history")
    if history is not None and (not isinstance(history, dict) or history.get("type") != "array"):
        return "The workflow's “history” input must be a list (the conversation so far) for a chat assistant."
    others = [name for name in schema.get("required") or [] if name not in ("message", "history")]
    if others:
        return f"A chat sends only “message” and “history”; the workflow also requires {', '.join(others)}."
    return None


# --- email triggers: where mail arrives ---------------------------------------------------------------------

EMAIL_RECEIVE = ("address", "mailbox")
_CONNECTION_NAME = re.compile(r"^[-a-zA-Z0-9_]{1,64}$")


def _email_config_clean(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """An email trigger's settings: `receive` ("address", the default, or "mailbox") picks where mail comes from;
    a mailbox needs `connection`. Stored as {} for the address and {"connection": name} for a mailbox, so the
    triggers made before mailboxes existed read as they always did."""
    connection = str(config.get("connection") or "").strip()
    receive = str(config.get("receive") or ("mailbox" if connection else "address"))
    if receive not in EMAIL_RECEIVE:
        return {}, {"receive": ["Choose the inbound address or a mailbox."]}
    if receive == "address":
        return {}, {}
    if not connection:
        return {}, {"connection": ["Choose the mailbox to read."]}
    if not _CONNECTION_NAME.match(connection):
        return {}, {"connection": [f"“{connection[:80]}” is not a connection name."]}
    return {"connection": connection}, {}


def email_mailbox_name(config: dict[str, Any]) -> str:
    """The mailbox connection an email trigger reads ("" when mail arrives at its inbound address)."""
    return str(config.get("connection") or "") if isinstance(config, dict) else ""


def inputs_mapping_clean(inputs: Any) -> tuple[dict[str, str], list[str]]:
    """A mapping {run input field: CEL expression over `payload`} checked for shape and syntax."""
    if inputs in (None, "", {}):
        return {}, []
    if not isinstance(inputs, dict):
        return {}, ["The input mapping is an object of field names and expressions."]
    if len(inputs) > MAX_MAPPING_FIELDS:
        return {}, [f"At most {MAX_MAPPING_FIELDS} fields."]
    problems = []
    clean: dict[str, str] = {}
    for name, expression in inputs.items():
        if not str(name).isidentifier():
            problems.append(f"“{name}” is not a field name (letters, digits and _).")
            continue
        if not isinstance(expression, str) or not expression.strip():
            problems.append(f"{name}: give an expression, e.g. payload.subject.")
            continue
        problem = cel_check(expression.strip())
        if problem:
            problems.append(f"{name}: {problem}")
            continue
        clean[str(name)] = expression.strip()
    return clean, problems


def inputs_mapping_parse(text: str) -> tuple[dict[str, str], list[str]]:
    """The pages' mapping box: one `field = expression` per line (blank lines and # comments ignored)."""
    mapping: dict[str, str] = {}
    problems = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sign, expression = line.partition("=")
        if not sign:
            problems.append(f"Line {number}: write it as field = expression, e.g. claim_text = payload.text.")
            continue
        mapping[name.strip()] = expression.strip()
    clean, more = inputs_mapping_clean(mapping) if mapping else ({}, [])
    return clean, problems + more


def inputs_mapping_text(mapping: dict[str, str]) -> str:
    """The mapping as the pages' box shows it."""
    return "\n".join(f"{name} = {expression}" for name, expression in mapping.items())


class MappingFailed(Exception):
    """A mapping expression that did not evaluate on this payload; the message names the field."""


def inputs_from_payload(
    mapping: dict[str, str], payload: dict[str, Any], schema: dict[str, Any], *, passthrough: bool
) -> dict[str, Any]:
    """The run inputs a firing's payload gives: each mapped field's expression evaluated over `payload`.

    Without a mapping, `passthrough` gives the payload itself (a webhook's JSON body: unknown fields are then
    refused by the input schema, so a misspelt field is never silently dropped); otherwise the payload's fields
    that the input schema has (a mail, a schedule, another run: their payloads carry more than a workflow asks).
    """
    if not mapping:
        if passthrough:
            return dict(payload)
        properties = schema.get("properties") or {}
        return {name: value for name, value in payload.items() if name in properties and value is not None}
    inputs: dict[str, Any] = {}
    for name, expression in mapping.items():
        try:
            inputs[name] = cel_evaluate(expression, {"payload": payload})
        except ExpressionError as error:
            raise MappingFailed(f"{name}: {error}") from None
    return inputs
