"""The queue pages: the list of queues a person may see (admins create queues there), one queue's settings as a
readable form for those who manage it (plain text for everyone else who may see it), and its members.

The settings form speaks the business's units (percentages, business hours, weekdays, dates) and converts them to
the stored ones; `apps.approvals.services.approval_queue_update` has the last word on every value. Lists of rows
(holidays, escalation steps, reason codes) grow and shrink with submit buttons, so they work without JavaScript.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from apps.accounts.models import Team, User
from apps.accounts.roles import ADMIN, user_roles
from apps.approvals.calendar import BusinessCalendar, CalendarError
from apps.approvals.membership import (
    RIGHT_LABELS,
    RIGHTS,
    member_group_choices,
    queue_escalation_group_set,
    queue_member_add,
    queue_member_remove,
    queue_members,
)
from apps.approvals.models import ApprovalQueue, ApprovalRequest, Assignment, DecisionPolicy, EscalationTimer
from apps.approvals.rules import MANAGE, user_manages_queue
from apps.approvals.selectors import queue_get_for_user, queue_list_for_user, worked_queue_ids
from apps.approvals.services import (
    approval_queue_create,
    approval_queue_update,
    queue_settings_clean,
)
from apps.core.exceptions import ApplicationError, ValidationFailed
from apps.core.permissions import restrict

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
SHORT_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
# The zones offered in the settings form; a queue already on another zone keeps it as an extra option.
COMMON_TIME_ZONES = (
    "UTC",
    "Europe/London",
    "Europe/Dublin",
    "Europe/Lisbon",
    "Europe/Paris",
    "Europe/Brussels",
    "Europe/Amsterdam",
    "Europe/Luxembourg",
    "Europe/Berlin",
    "Europe/Zurich",
    "Europe/Vienna",
    "Europe/Rome",
    "Europe/Madrid",
    "Europe/Copenhagen",
    "Europe/Oslo",
    "Europe/Stockholm",
    "Europe/Helsinki",
    "Europe/Warsaw",
    "Europe/Prague",
    "Europe/Budapest",
    "Europe/Athens",
    "Europe/Bucharest",
    "Europe/Istanbul",
    "America/New_York",
    "America/Chicago",
    "America/Denver",
    "America/Los_Angeles",
    "America/Toronto",
    "America/Mexico_City",
    "America/Sao_Paulo",
    "Africa/Johannesburg",
    "Africa/Lagos",
    "Africa/Nairobi",
    "Asia/Dubai",
    "Asia/Kolkata",
    "Asia/Singapore",
    "Asia/Hong_Kong",
    "Asia/Shanghai",
    "Asia/Tokyo",
    "Australia/Sydney",
    "Pacific/Auckland",
)
POLICY_LABELS = {
    DecisionPolicy.ANY: "Any one reviewer's approval is enough",
    DecisionPolicy.ALL: "Everyone who works the queue must approve",
    DecisionPolicy.K_OF_N: "A number of different reviewers must approve",
    DecisionPolicy.SEQUENTIAL: "Several queues approve one after another, in the order the workflow step names them",
}
ASSIGNMENT_LABELS = {
    Assignment.PULL: "Reviewers take items themselves, with “Next item”",
    Assignment.ROUND_ROBIN: "Each new item goes to the next reviewer in turn",
    Assignment.LEAST_LOADED: "Each new item goes to the reviewer with the fewest open items",
}
ESCALATION_LABELS = dict(EscalationTimer.Action.choices)
PERCENT_FIELDS = (
    (
        "confirm_below",
        "Confirm fields below",
        "Fields the model is less sure of than this must be confirmed or corrected by the reviewer.",
    ),
    (
        "bulk_threshold",
        "Bulk approval from",
        "Items whose every field is at least this sure may be approved together. Empty: no bulk approval.",
    ),
    (
        "audit_sample_rate",
        "Review anyway (sample)",
        "The share of items that would go straight through that a reviewer checks all the same.",
    ),
)
# Row lists of the settings form: name → the form fields of one row.
ROW_LISTS = {
    "holidays": ("holiday",),
    "escalation": ("escalation_at", "escalation_action"),
    "reasons": ("reason_code", "reason_label"),
}
MAX_ROWS = 50
# The service numbers the rows of a list it refuses ("Step 2: …", "Code 3: …"); the form shows each under its row.
_ROW_MESSAGE = re.compile(r"^(?:Step|Code) (\d+): (.*)$")


def _actor(request: HttpRequest) -> User:
    return request.user  # type: ignore[return-value]


def _is_admin(user: User) -> bool:
    return bool(user.is_superuser or ADMIN in user_roles(user))


# --- words ----------------------------------------------------------------------------------------------------


def _number(value: float) -> str:
    """12.0 → "12", 0.5 → "0.5": what a person would type."""
    return f"{round(value, 4):g}"


def _percent(fraction: float | None) -> str:
    return "" if fraction is None else _number(fraction * 100)


def weekdays_text(days: list[int] | tuple[int, ...]) -> str:
    """[0, 1, 2, 3, 4] → "Mon–Fri"; [0, 2, 4] → "Mon, Wed, Fri"; all seven → "every day"."""
    chosen = sorted(set(days))
    if len(chosen) == 7:
        return "every day"
    runs: list[list[int]] = []
    for day in chosen:
        if runs and day == runs[-1][-1] + 1:
            runs[-1].append(day)
        else:
            runs.append([day])
    parts = []
    for run in runs:
        if len(run) >= 3:
            parts.append(f"{SHORT_WEEKDAYS[run[0]]}–{SHORT_WEEKDAYS[run[-1]]}")
        else:
            parts.extend(SHORT_WEEKDAYS[day] for day in run)
    return ", ".join(parts)


def calendar_text(calendar: dict[str, Any]) -> str:
    """ "Mon–Fri 09:00–17:00 Europe/Berlin, except 2 holidays", or "around the clock" for an empty calendar."""
    if not calendar:
        return "around the clock"
    try:
        parsed = BusinessCalendar.from_dict(calendar)
    except (CalendarError, ValueError, TypeError):
        return "a calendar that needs fixing"
    data = parsed.to_dict()
    hours = (
        "all day"
        if (data["day_start"], data["day_end"]) == ("00:00", "24:00")
        else f"{data['day_start']}–{data['day_end']}"
    )
    text = f"{weekdays_text(parsed.working_days)} {hours} {parsed.time_zone}"
    if parsed.holidays:
        text += f", except {len(parsed.holidays)} holiday{'s' if len(parsed.holidays) != 1 else ''}"
    return text


def sla_text(queue: ApprovalQueue) -> str:
    """ "4 business hours, Mon–Fri 09:00–17:00 Europe/Berlin", "8 hours, around the clock", or "no due time"."""
    if queue.sla_hours is None:
        return "no due time"
    unit = "hour" if queue.sla_hours == 1 else "hours"
    if not queue.calendar:
        return f"{_number(queue.sla_hours)} {unit}, around the clock"
    return f"{_number(queue.sla_hours)} business {unit}, {calendar_text(queue.calendar)}"


def policy_text(queue: ApprovalQueue) -> str:
    if queue.policy == DecisionPolicy.K_OF_N:
        count = queue.required_approvals
        return f"{count} different reviewer{'s' if count != 1 else ''} must approve"
    return str(POLICY_LABELS.get(queue.policy, queue.policy))  # type: ignore[call-overload]


def escalation_text(step: dict[str, Any]) -> str:
    action = str(step.get("action"))
    return f"At {_percent(step.get('at'))} % of the due time: {ESCALATION_LABELS.get(action, action)}"


# --- the list ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueRow:
    queue: ApprovalQueue
    pending: int
    works: bool
    manages: bool
    sla: str
    policy: str


def _queue_rows(user: User) -> list[QueueRow]:
    queues = queue_list_for_user(user).annotate(
        pending=Count("requests", filter=Q(requests__state=ApprovalRequest.State.PENDING))
    )
    admin = _is_admin(user)
    worked = set(worked_queue_ids(user))
    managed = set() if admin else set(restrict(ApprovalQueue.objects.all(), user, MANAGE).values_list("pk", flat=True))
    return [
        QueueRow(
            queue=queue,
            pending=queue.pending,
            works=queue.pk in worked,
            manages=admin or queue.lead_id == user.pk or queue.pk in managed,
            sla=sla_text(queue),
            policy=policy_text(queue),
        )
        for queue in queues
    ]


@login_required
@require_http_methods(["GET", "POST"])
def queue_list(request: HttpRequest) -> HttpResponse:
    """The queues she may see, with their due times and decision rules in words; admins create queues here."""
    user = _actor(request)
    admin = _is_admin(user)
    new_values: dict[str, str] = {}
    new_errors: dict[str, list[str]] = {}
    if request.method == "POST":
        if not admin:
            raise PermissionDenied("Only admins create approval queues.")
        new_values = {name: request.POST.get(name, "").strip() for name in ("key", "name", "team", "lead")}
        team = Team.objects.select_related("group").filter(pk=_int(new_values["team"])).first()
        lead = User.objects.filter(pk=_int(new_values["lead"]), is_active=True).first()
        if new_values["team"] and team is None:
            new_errors["team"] = ["Choose a team from the list."]
        if new_values["lead"] and lead is None:
            new_errors["lead"] = ["Choose a person from the list."]
        if not new_errors:
            holders = [team.group] if team else []
            try:
                queue = approval_queue_create(
                    actor=user,
                    key=new_values["key"],
                    name=new_values["name"],
                    team=team,
                    lead=lead,
                    workers=holders,
                    users=holders,
                )
            except ValidationFailed as refusal:
                new_errors = dict(refusal.fields)
            else:
                messages.success(request, f'Created the queue "{queue.name}". Set its due time and rules below.')
                return redirect("approvals:queue", key=queue.key)
    context: dict[str, Any] = {
        "rows": _queue_rows(user),
        "admin": admin,
        "new_values": new_values,
        "new_errors": new_errors,
        "new_open": bool(new_errors),
    }
    if admin:
        context["teams"] = list(Team.objects.order_by("name"))
        context["people"] = list(User.objects.filter(is_active=True).order_by("first_name", "username"))
    return render(request, "approvals/queue_list.html", context, status=400 if new_errors else 200)


def _int(text: str) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        return 0


# --- one queue's settings ---------------------------------------------------------------------------------------


@dataclass
class SettingsForm:
    """The settings form's values as the person typed them (strings, lists of row dicts), its errors by field,
    and the changes for `approval_queue_update` parsed from it."""

    values: dict[str, Any]
    errors: dict[str, list[str]] = field(default_factory=dict)
    changes: dict[str, Any] = field(default_factory=dict)
    lead: User | None = None
    escalation_group: Group | None = None
    focus: str = ""

    @classmethod
    def from_queue(cls, queue: ApprovalQueue) -> SettingsForm:
        calendar = queue.calendar or {}
        try:
            parsed = BusinessCalendar.from_dict(calendar).to_dict() if calendar else {}
        except (CalendarError, ValueError, TypeError):
            parsed = {}
        defaults = BusinessCalendar().to_dict()
        shown = parsed or defaults
        return cls(
            values={
                "name": queue.name,
                "description": queue.description,
                "lead": str(queue.lead_id or ""),
                "escalation_group": str(queue.escalation_group_id or ""),
                "hours_mode": "business" if calendar else "always",
                "time_zone": shown["time_zone"],
                "working_days": [str(day) for day in shown["working_days"]],
                "day_start": shown["day_start"],
                # A time input has no 24:00: midnight at the end of the day shows (and is typed) as 00:00.
                "day_end": "00:00" if shown["day_end"] == "24:00" else shown["day_end"],
                "holidays": [{"holiday": day} for day in shown["holidays"]],
                "sla_hours": "" if queue.sla_hours is None else _number(queue.sla_hours),
                "escalation": [
                    {"escalation_at": _percent(step.get("at")), "escalation_action": step.get("action", "")}
                    for step in queue.escalation or []
                ],
                "policy": queue.policy,
                "required_approvals": str(queue.required_approvals),
                "separation_of_duties": queue.separation_of_duties,
                "confirm_below": _percent(queue.confirm_below),
                "bulk_threshold": _percent(queue.bulk_threshold),
                "audit_sample_rate": _percent(queue.audit_sample_rate),
                "assignment": queue.assignment,
                "reasons": [
                    {"reason_code": code.get("code", ""), "reason_label": code.get("label", "")}
                    for code in queue.reason_codes or []
                ],
            }
        )

    @classmethod
    def from_post(cls, post: QueryDict) -> SettingsForm:
        values: dict[str, Any] = {
            name: post.get(name, "")
            for name in (
                "name",
                "description",
                "lead",
                "escalation_group",
                "hours_mode",
                "time_zone",
                "day_start",
                "day_end",
                "sla_hours",
                "policy",
                "required_approvals",
                "confirm_below",
                "bulk_threshold",
                "audit_sample_rate",
                "assignment",
            )
        }
        values["working_days"] = post.getlist("working_days")
        values["separation_of_duties"] = "separation_of_duties" in post
        for list_name, names in ROW_LISTS.items():
            columns = [post.getlist(name)[:MAX_ROWS] for name in names]
            length = max((len(column) for column in columns), default=0)
            values[list_name] = [
                {
                    name: (column[index] if index < len(column) else "")
                    for name, column in zip(names, columns, strict=True)
                }
                for index in range(length)
            ]
        return cls(values=values)

    # --- rows without JavaScript

    def add_row(self, list_name: str) -> None:
        if list_name in ROW_LISTS and len(self.values[list_name]) < MAX_ROWS:
            self.values[list_name].append(dict.fromkeys(ROW_LISTS[list_name], ""))
            self.focus = f"{ROW_LISTS[list_name][0]}-{len(self.values[list_name]) - 1}"

    def remove_row(self, target: str) -> None:
        list_name, _, index = target.rpartition("-")
        rows = self.values.get(list_name)
        if list_name in ROW_LISTS and isinstance(rows, list) and index.isdigit() and int(index) < len(rows):
            del rows[int(index)]
            self.focus = f"add-{list_name}"

    def drop_blank_rows(self) -> None:
        """Rows left empty mean nothing; dropping them also makes the rows' numbers those the service uses."""
        for list_name in ROW_LISTS:
            self.values[list_name] = [row for row in self.values[list_name] if any(v.strip() for v in row.values())]

    # --- parsing

    def parse(self) -> None:
        """Fill `changes` from `values`, and `errors` with what cannot even be read (a word where a number goes)."""
        values, errors, changes = self.values, self.errors, self.changes
        self.drop_blank_rows()
        changes["name"] = values["name"]
        changes["description"] = values["description"]
        if values["lead"]:
            self.lead = User.objects.filter(pk=_int(values["lead"]), is_active=True).first()
            if self.lead is None:
                errors["lead"] = ["Choose a person from the list."]
        if values["escalation_group"]:
            self.escalation_group = Group.objects.filter(pk=_int(values["escalation_group"])).first()
            if self.escalation_group is None:
                errors["escalation_group"] = ["Choose a group from the list."]
        self._parse_calendar()
        if values["sla_hours"].strip():
            number = _float(values["sla_hours"])
            if number is None:
                errors["sla_hours"] = ["Enter a number of business hours, e.g. 8, or leave it empty for no due time."]
            else:
                changes["sla_hours"] = number
        else:
            changes["sla_hours"] = None
        self._parse_escalation()
        changes["policy"] = values["policy"]
        if values["policy"] == DecisionPolicy.K_OF_N:
            try:
                changes["required_approvals"] = int(values["required_approvals"].strip())
            except ValueError:
                errors["required_approvals"] = ["Enter a whole number from 1 to 20."]
        changes["separation_of_duties"] = values["separation_of_duties"]
        for name, optional in (("confirm_below", False), ("bulk_threshold", True), ("audit_sample_rate", False)):
            text = values[name].strip()
            if not text and optional:
                changes[name] = None
                continue
            number = _float(text)
            if number is None or not 0 <= number <= 100:
                errors[name] = ["Enter a percentage from 0 to 100."]
            else:
                changes[name] = round(number / 100, 6)
        changes["assignment"] = values["assignment"]
        changes["reason_codes"] = [
            {"code": row["reason_code"].strip(), "label": row["reason_label"].strip()} for row in values["reasons"]
        ]

    def _parse_calendar(self) -> None:
        values = self.values
        if values["hours_mode"] == "always":
            self.changes["calendar"] = {}
            return
        calendar: dict[str, Any] = {
            "time_zone": values["time_zone"],
            "working_days": [_int(day) if day.isdigit() else day for day in values["working_days"]],
            "day_start": values["day_start"] or "",
            "day_end": "24:00" if values["day_end"] in ("00:00", "24:00") else values["day_end"] or "",
            "holidays": [row["holiday"].strip() for row in values["holidays"]],
        }
        try:
            self.changes["calendar"] = BusinessCalendar.from_dict(calendar).to_dict()
        except CalendarError as error:
            # The calendar names the setting at fault, so the message goes beside that input.
            self.errors[f"calendar_{error.field or 'time_zone'}"] = [_sentence(str(error))]

    def _parse_escalation(self) -> None:
        steps = []
        for index, row in enumerate(self.values["escalation"]):
            number = _float(row["escalation_at"])
            if number is None or not 0 < number <= 300:
                self.errors[f"escalation-{index}"] = ["Enter a percentage of the due time above 0 and at most 300."]
                continue
            steps.append({"at": round(number / 100, 6), "action": row["escalation_action"]})
        self.changes["escalation"] = steps

    def add_service_errors(self, fields: dict[str, list[str]]) -> None:
        """The service's refusals, each under its input (and each row's under its row)."""
        for name, problems in fields.items():
            if name == "calendar":
                self.errors.setdefault("calendar_time_zone", []).extend(_sentence(problem) for problem in problems)
                continue
            for problem in problems:
                match = _ROW_MESSAGE.match(problem)
                if match and name in ("escalation", "reason_codes"):
                    prefix = "escalation" if name == "escalation" else "reasons"
                    problem = _sentence(match[2])
                    self.errors.setdefault(f"{prefix}-{int(match[1]) - 1}", []).append(
                        problem[:1].upper() + problem[1:]
                    )
                else:
                    self.errors.setdefault(name, []).append(problem)


def _float(text: str) -> float | None:
    try:
        number = float(text.strip().replace(",", "."))
    except ValueError:
        return None
    return number if number == number and abs(number) != float("inf") else None


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


def _time_zones(current: str) -> list[str]:
    zones = [zone for zone in COMMON_TIME_ZONES if _zone_exists(zone)]
    if current and current not in zones:
        zones.insert(0, current)
    return zones


def _zone_exists(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # missing from this system's tz database: not offered
        return False
    return True


def _settings_context(
    request: HttpRequest,
    queue: ApprovalQueue,
    form: SettingsForm,
    *,
    member_errors: list[str] | None = None,
    member_values: dict[str, str] | None = None,
) -> dict[str, Any]:
    user = _actor(request)
    manages = user_manages_queue(user, queue)
    context: dict[str, Any] = {
        "queue": queue,
        "manages": manages,
        "form": form.values,
        "errors": form.errors,
        "holiday_rows": _rows(form, "holidays", "holiday"),
        "escalation_rows": _rows(form, "escalation", "escalation_at"),
        "reason_rows": _rows(form, "reasons", "reason_code"),
        "focus": form.focus,
        "sla": sla_text(queue),
        "calendar_words": calendar_text(queue.calendar or {}),
        "policy_words": policy_text(queue),
        "escalation_words": [escalation_text(step) for step in queue.escalation or []],
        "assignment_words": ASSIGNMENT_LABELS.get(queue.assignment, queue.assignment),  # type: ignore[call-overload]
        "escalation_group_label": _group_label(queue.escalation_group) if queue.escalation_group else "",
        "pending": ApprovalRequest.objects.filter(queue=queue, state=ApprovalRequest.State.PENDING).count(),
        "raw": json.dumps(_raw(queue), indent=2, ensure_ascii=False),
    }
    if manages:
        groups = member_group_choices()
        current_group = queue.escalation_group
        if current_group is not None and current_group not in groups:
            groups.insert(0, current_group)
        people = list(User.objects.filter(is_active=True).order_by("first_name", "username"))
        context.update(
            people=people,
            groups=groups,
            weekdays=list(enumerate(WEEKDAYS)),
            time_zones=_time_zones(form.values.get("time_zone", "")),
            policies=[(value, POLICY_LABELS[value]) for value in DecisionPolicy],
            assignments=[(value, ASSIGNMENT_LABELS[value]) for value in Assignment],
            actions=list(EscalationTimer.Action.choices),
            members=queue_members(queue),
            member_group_options=[(f"group:{group.pk}", _group_label(group)) for group in groups],
            member_people_options=[
                (f"user:{person.pk}", f"{person.display_name} ({person.username})") for person in people
            ],
            percent_fields=[
                {
                    "name": name,
                    "label": label,
                    "help": help_text,
                    "value": form.values[name],
                    "errors": form.errors.get(name, []),
                }
                for name, label, help_text in PERCENT_FIELDS
            ],
            rights=[(name, RIGHT_LABELS[name]) for name in RIGHTS],
            member_errors=member_errors or [],
            member_values=member_values or {},
        )
    return context


def _rows(form: SettingsForm, list_name: str, first: str) -> list[dict[str, Any]]:
    """A row list for the template: each row's values, number (from 1), errors, and whether it takes the focus."""
    return [
        {
            "index": index,
            "number": index + 1,
            "values": row,
            "errors": form.errors.get(f"{list_name}-{index}", []),
            "focus": form.focus == f"{first}-{index}",
        }
        for index, row in enumerate(form.values[list_name])
    ]


def _raw(queue: ApprovalQueue) -> dict[str, Any]:
    return {
        "key": queue.key,
        "name": queue.name,
        "team": queue.team.slug if queue.team else None,
        "lead": queue.lead.username if queue.lead else None,
        "escalation_group": queue.escalation_group.name if queue.escalation_group else None,
        "calendar": queue.calendar,
        "sla_hours": queue.sla_hours,
        "escalation": queue.escalation,
        "policy": queue.policy,
        "required_approvals": queue.required_approvals,
        "separation_of_duties": queue.separation_of_duties,
        "confirm_below": queue.confirm_below,
        "bulk_threshold": queue.bulk_threshold,
        "audit_sample_rate": queue.audit_sample_rate,
        "assignment": queue.assignment,
        "reason_codes": queue.reason_codes,
    }


def _queue_for(request: HttpRequest, key: str) -> ApprovalQueue:
    queue = queue_get_for_user(request.user, key=key)
    # The page names the escalation group; the list selector does not join it.
    return ApprovalQueue.objects.select_related("team", "lead", "escalation_group").get(pk=queue.pk)


@login_required
@require_http_methods(["GET", "POST"])
def queue_settings(request: HttpRequest, key: str) -> HttpResponse:
    """One queue: its settings as a form for those who manage it, in words for others who may see it. A POST
    with `add_row` or `remove_row` only re-renders the form with a row more or less, keeping what was typed."""
    queue = _queue_for(request, key)
    user = _actor(request)
    if request.method == "GET":
        return render(
            request, "approvals/queue_settings.html", _settings_context(request, queue, SettingsForm.from_queue(queue))
        )
    if not user_manages_queue(user, queue):
        raise PermissionDenied("Only the queue's lead, an admin or a manager of the queue can change it.")
    form = SettingsForm.from_post(request.POST)
    if request.POST.get("add_row") or request.POST.get("remove_row"):
        form.add_row(request.POST.get("add_row", ""))
        form.remove_row(request.POST.get("remove_row", ""))
        return render(request, "approvals/queue_settings.html", _settings_context(request, queue, form))
    form.parse()
    if form.errors:
        # Nothing is saved while any value cannot be read; the service's own checks of the rest are shown too.
        try:
            queue_settings_clean(form.changes)
        except ValidationFailed as refusal:
            form.add_service_errors(refusal.fields)
    else:
        try:
            with transaction.atomic():
                # The group first: a lead who hands the lead to someone else may still set it in the same save.
                locked = queue_escalation_group_set(actor=user, queue=queue, group=form.escalation_group)
                approval_queue_update(actor=user, queue=locked, lead=form.lead, **form.changes)
        except ValidationFailed as refusal:
            form.add_service_errors(refusal.fields)
            queue.refresh_from_db()
    if form.errors:
        context = _settings_context(request, queue, form)
        context["error_count"] = sum(len(problems) for problems in form.errors.values())
        return render(request, "approvals/queue_settings.html", context, status=400)
    messages.success(request, f'Saved the settings of "{queue.name}".')
    return redirect("approvals:queue", key=queue.key)


# --- members ------------------------------------------------------------------------------------------------------


@login_required
@require_POST
def queue_members_change(request: HttpRequest, key: str) -> HttpResponse:
    """Add a person or a group to the queue with a right, or remove one (every right granted here)."""
    queue = _queue_for(request, key)
    user = _actor(request)
    if not user_manages_queue(user, queue):
        raise PermissionDenied("Only the queue's lead, an admin or a manager of the queue can change its members.")
    action = request.POST.get("action", "add")
    member = request.POST.get("member", "")
    right = request.POST.get("right", "work")
    person, group = _member(member)
    try:
        if person is None and group is None:
            raise ValidationFailed("Choose who.", fields={"member": ["Choose a person or a group from the list."]})
        if action == "remove":
            queue_member_remove(actor=user, queue=queue, user=person, group=group)
            done = f"Removed {_member_name(person, group)} from the queue."
        else:
            changed = queue_member_add(actor=user, queue=queue, user=person, group=group, right=right)
            label = RIGHT_LABELS.get(right, right).lower()
            who = _member_name(person, group)
            done = f"{who}: {label}." if changed else f"{who} already had that right: nothing changed."
    except ApplicationError as refusal:
        problems = [refusal.message]
        if isinstance(refusal, ValidationFailed):
            problems = [problem for field_problems in refusal.fields.values() for problem in field_problems]
        context = _settings_context(
            request,
            queue,
            SettingsForm.from_queue(queue),
            member_errors=problems,
            member_values={"member": member, "right": right} if action != "remove" else {},
        )
        return render(request, "approvals/queue_settings.html", context, status=400)
    messages.success(request, done)
    return redirect(reverse("approvals:queue", kwargs={"key": queue.key}) + "#members")


def _member(value: str) -> tuple[User | None, Group | None]:
    kind, _, pk = value.partition(":")
    if kind == "user":
        return User.objects.filter(pk=_int(pk)).first(), None
    if kind == "group":
        return None, Group.objects.select_related("team").filter(pk=_int(pk)).first()
    return None, None


def _group_label(group: Group) -> str:
    team = getattr(group, "team", None)
    return f"{team.name} team" if team is not None else group.name


def _member_name(person: User | None, group: Group | None) -> str:
    if person is not None:
        return person.display_name
    team = getattr(group, "team", None) if group is not None else None
    return f"the {team.name} team" if team is not None else (group.name if group else "")
