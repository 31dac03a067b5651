"""Business calendars and the SLA wording of the reviewer inbox. Pure Python: no Django, no database.

An approval queue's SLA is "N business hours" on a :class:`BusinessCalendar`: an item created at ``created_at``
is due at ``calendar.add(created_at, N)``; :func:`escalation_times` gives the moments its reminders fire; and
:func:`sla_state` words how it stands for the inbox (text *and* icon, never colour alone).

Choices, stated once:

* **End of day.** ``day_end=None`` means midnight at the end of the day (24:00); ``to_dict`` writes it as
  ``"24:00"``. ``time.max`` would leave a microsecond hole before midnight and ``time(0)`` would read as
  "closes before it opens", so neither stands in for it.
* **Time zones and daylight saving.** Opening and closing are wall-clock times in ``time_zone``; a working day
  counts the real time elapsed between its opening and closing instants. So 09:00–17:00 is 8 h on a DST change
  day whenever the change falls outside those hours (the usual 02:00/03:00 change), and a day the change falls
  inside is as long as it really is: a 24/7 calendar in Berlin has a 23 h day in March and a 25 h day in October.
  A wall time the clocks skip means the moment they jump; one they pass twice means its first occurrence. Both
  are "the first instant the clock reads that time or later", which never runs backwards, so a day's window
  never closes before it opens and never overlaps the next day's.
* **Boundaries.** Working time is half-open: open at 09:00:00, closed again at 17:00:00.
* **Bounds.** ``add`` and ``next_open`` look at most ten years ahead and raise ``ValueError`` beyond, so a
  calendar whose holidays cover every working day cannot hang a worker; ``from_dict`` already refuses a calendar
  with no working days or an empty working day.
* **Results** are aware datetimes in UTC; inputs must be aware (any zone).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

SEARCH_LIMIT_DAYS = 3653  # ten years, leap days included
_ONE_DAY = timedelta(days=1)
_ONE_MICROSECOND = timedelta(microseconds=1)
_MIDNIGHT = time(0)
_END_OF_DAY_TEXT = "24:00"
_TIME_PATTERN = re.compile(r"(\d{1,2}):(\d{2})")
_DATE_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}")
_FIELDS = ("time_zone", "working_days", "day_start", "day_end", "holidays")


class CalendarError(ValueError):
    """A calendar setting a person got wrong.

    The message is written for the person who typed the setting; ``field`` is the ``to_dict`` key it belongs to,
    so a form can show the message beside that input.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class BusinessCalendar:
    """When the clock of an SLA runs: working weekdays (Monday = 0), opening hours and holidays in one time zone.

    Constructing one validates it (``CalendarError``, a ``ValueError``) and normalises ``working_days`` and
    ``holidays`` to sorted tuples without repeats, so equal calendars compare and hash equal. ``day_end=None``
    means 24:00. Opening and closing are whole minutes; a working day cannot run past midnight.
    """

    time_zone: str = "UTC"
    working_days: tuple[int, ...] = (0, 1, 2, 3, 4)
    day_start: time = time(9)
    day_end: time | None = time(17)
    holidays: tuple[date, ...] = ()

    def __post_init__(self) -> None:
        _zone_named(self.time_zone)
        days = tuple(self.working_days)
        for day in days:
            if isinstance(day, bool) or not isinstance(day, int) or not 0 <= day <= 6:
                raise CalendarError(
                    "working_days", f"Working day {day!r} is not a weekday: use 0 (Monday) to 6 (Sunday)"
                )
        if not days:
            raise CalendarError("working_days", "Pick at least one working day")
        _check_clock_time("day_start", "Opening time", self.day_start)
        if self.day_end is not None:
            _check_clock_time("day_end", "Closing time", self.day_end)
            if self.day_end <= self.day_start:
                raise CalendarError(
                    "day_end",
                    f"The working day must end after it starts (it opens at {self.day_start:%H:%M} "
                    f"and closes at {self.day_end:%H:%M})",
                )
        holidays = tuple(self.holidays)
        for holiday in holidays:
            # datetime is a subclass of date; a holiday with a time of day is a mistake, not a date.
            if not isinstance(holiday, date) or isinstance(holiday, datetime):
                raise CalendarError("holidays", f"Holiday {holiday!r} is not a date like 2025-12-25")
        # The dataclass is frozen for callers; normalising here is the one write it permits itself.
        object.__setattr__(self, "working_days", tuple(sorted(set(days))))
        object.__setattr__(self, "holidays", tuple(sorted(set(holidays))))

    # --- serialisation -------------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BusinessCalendar:
        """Parse the JSON form written by :meth:`to_dict`; missing keys take the defaults.

        Raises ``CalendarError`` (a ``ValueError``) naming the field, with a message a business user can act on:
        an unknown time zone, a time that is not "HH:MM", a day that ends before it starts, no working days, a
        holiday that is not a "YYYY-MM-DD" date, or a key this calendar does not have.
        """
        if not isinstance(data, Mapping):
            raise CalendarError("", "A calendar must be a set of named settings (a JSON object)")
        for key in data:
            if key not in _FIELDS:
                raise CalendarError(str(key), f"Unknown calendar setting {key!r}")
        defaults = cls()
        time_zone = data.get("time_zone", defaults.time_zone)
        if not isinstance(time_zone, str):
            raise CalendarError("time_zone", "The time zone must be a name like Europe/Berlin")
        working_days = data.get("working_days", list(defaults.working_days))
        if isinstance(working_days, str | bytes) or not isinstance(working_days, Iterable):
            raise CalendarError("working_days", "Working days must be a list of weekdays, 0 (Monday) to 6 (Sunday)")
        day_start = _parse_clock_time("day_start", "Opening time", data.get("day_start", "09:00"))
        if day_start is None:
            raise CalendarError("day_start", "The working day cannot open at 24:00; use 00:00 for midnight")
        day_end = _parse_clock_time("day_end", "Closing time", data.get("day_end", "17:00"))
        raw_holidays = data.get("holidays", [])
        if isinstance(raw_holidays, str | bytes) or not isinstance(raw_holidays, Iterable):
            raise CalendarError("holidays", "Holidays must be a list of dates like 2025-12-25")
        holidays = tuple(_parse_date(value) for value in raw_holidays)
        return cls(
            time_zone=time_zone,
            working_days=tuple(working_days),
            day_start=day_start,
            day_end=day_end,
            holidays=holidays,
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: IANA zone name, weekday numbers, "HH:MM" times ("24:00" for midnight), ISO dates.

        ``BusinessCalendar.from_dict(calendar.to_dict()) == calendar`` for every calendar.
        """
        return {
            "time_zone": self.time_zone,
            "working_days": list(self.working_days),
            "day_start": f"{self.day_start:%H:%M}",
            "day_end": _END_OF_DAY_TEXT if self.day_end is None else f"{self.day_end:%H:%M}",
            "holidays": [holiday.isoformat() for holiday in self.holidays],
        }

    # --- business time -------------------------------------------------------------------------------------

    def is_open(self, moment: datetime) -> bool:
        """Whether ``moment`` (aware) falls in working time: opening included, closing excluded."""
        instant = _as_utc(moment, "moment")
        day = self._local_date(instant)
        return any(opens <= instant < closes for opens, closes in self._windows(day, day))

    def next_open(self, moment: datetime) -> datetime:
        """``moment`` itself (in UTC) when open, else the next opening. Raises ``ValueError`` past ten years."""
        instant = _as_utc(moment, "moment")
        for opens, closes in self._windows_ahead(instant):
            if closes > instant:
                return max(opens, instant)
        raise ValueError("This calendar has no working time in the next ten years")

    def add(self, start: datetime, hours: float) -> datetime:
        """The instant (UTC) at which ``hours`` business hours have passed since ``start`` (aware).

        Counting begins at ``start`` if the calendar is open then, else at the next opening, so ``add(s, 0)`` is
        ``next_open(s)``; work that ends exactly at closing time is due at closing, not at the next opening.
        Walks one day at a time (a year of calendar days for 2,000 business hours) and raises ``ValueError`` for
        negative or non-finite hours, or when the answer lies more than ten years ahead.
        """
        instant = _as_utc(start, "start")
        if not math.isfinite(hours) or hours < 0:
            raise ValueError(f"Business hours must be zero or more, not {hours!r}")
        if hours > SEARCH_LIMIT_DAYS * 24:
            # Cheap refusal before timedelta() overflows or the walk runs to its bound.
            raise ValueError(f"{hours:g} business hours do not fit in the next ten years")
        remaining = timedelta(hours=hours)
        for opens, closes in self._windows_ahead(instant):
            if closes <= instant:
                continue
            begin = max(opens, instant)
            available = closes - begin
            if remaining <= available:
                return begin + remaining
            remaining -= available
        raise ValueError(f"{hours:g} business hours do not fit in the next ten years of this calendar")

    def business_hours_between(self, start: datetime, end: datetime) -> float:
        """Business hours from ``start`` to ``end`` (both aware); negative when ``end`` is before ``start``.

        Consistent with :meth:`add`: ``business_hours_between(s, add(s, h)) == h`` to the microsecond. Costs one
        step per calendar day in the span.
        """
        first = _as_utc(start, "start")
        last = _as_utc(end, "end")
        if last < first:
            return -self.business_hours_between(last, first)
        total = timedelta(0)
        for opens, closes in self._windows(self._local_date(first), self._local_date(last)):
            overlap = min(closes, last) - max(opens, first)
            if overlap > timedelta(0):
                total += overlap
        return total / timedelta(hours=1)

    # --- internals -----------------------------------------------------------------------------------------

    def _local_date(self, instant: datetime) -> date:
        return instant.astimezone(_zone_named(self.time_zone)).date()

    def _windows_ahead(self, instant: datetime) -> Iterator[tuple[datetime, datetime]]:
        first = self._local_date(instant)
        return self._windows(first, first + timedelta(days=SEARCH_LIMIT_DAYS))

    def _windows(self, first: date, last: date) -> Iterator[tuple[datetime, datetime]]:
        """Non-empty working windows ``(opens, closes)`` in UTC of the local dates ``first`` to ``last``, in order.

        A window of date ``d`` lies within ``[first instant of d, first instant of d + 1)``, so an instant whose
        local date is ``d`` can only fall in ``d``'s window: callers start at the local date of their instant.
        """
        zone = _zone_named(self.time_zone)
        working_days = frozenset(self.working_days)
        holidays = frozenset(self.holidays)
        day = first
        while day <= last:
            if day.weekday() in working_days and day not in holidays:
                opens = _first_instant_at(datetime.combine(day, self.day_start), zone)
                closing_wall = (
                    datetime.combine(day + _ONE_DAY, _MIDNIGHT)
                    if self.day_end is None
                    else datetime.combine(day, self.day_end)
                )
                closes = _first_instant_at(closing_wall, zone)
                # Both ends inside one skipped hour (02:15–02:45 on a spring-forward day) leave nothing to count.
                if closes > opens:
                    yield opens, closes
            day += _ONE_DAY


def escalation_times(
    calendar: BusinessCalendar, created_at: datetime, sla_hours: float, fractions: Iterable[float]
) -> list[datetime]:
    """The instant (UTC) each fraction of a ``sla_hours`` SLA is reached in business time, in the given order.

    ``fractions=(0.5, 0.8, 1.0)`` gives remind, notify-the-lead and reassign times; a fraction above 1 escalates
    after the breach. Raises ``ValueError`` for negative or non-finite hours or fractions.
    """
    if not math.isfinite(sla_hours) or sla_hours < 0:
        raise ValueError(f"SLA hours must be zero or more, not {sla_hours!r}")
    moments: list[datetime] = []
    for fraction in fractions:
        if not math.isfinite(fraction) or fraction < 0:
            raise ValueError(f"Escalation fractions must be zero or more, not {fraction!r}")
        moments.append(calendar.add(created_at, sla_hours * fraction))
    return moments


# --- SLA wording -------------------------------------------------------------------------------------------

SlaKind = Literal["none", "on_track", "due_soon", "breached"]


@dataclass(frozen=True)
class SlaState:
    """How an item stands against its due time, for the inbox.

    ``kind`` drives styling, ``text`` is shown ("4 h left", "breached 1 h 10 m ago"), ``icon`` names an inline SVG
    (clock, alarm, alert, minus) so the state never rests on colour alone, and ``label`` is the full sentence for
    screen readers ("On track: 4 h left").
    """

    kind: SlaKind
    text: str
    icon: str
    label: str


NO_DUE_TIME = SlaState(kind="none", text="no due time", icon="minus", label="No due time")


def sla_state(now: datetime, due_at: datetime | None, *, due_soon_within: timedelta = timedelta(hours=1)) -> SlaState:
    """Word how an item due at ``due_at`` stands at ``now`` (both aware).

    Breached only strictly after the due time: exactly at it the item is "due now". Remaining or overdue time is
    wall-clock time, floored as :func:`duration_text` does. The due time already counts business hours only; the
    text says how long *on the reader's clock* until it, because "2 h left" at Friday 16:00 for an item due
    Monday 10:00 would read as "before I go home" when it means Monday. The same holds for ``due_soon_within``:
    an item due Monday 09:30 is not "due soon" on Friday evening.
    """
    if due_at is None:
        return NO_DUE_TIME
    remaining = _as_utc(due_at, "due_at") - _as_utc(now, "now")
    if due_soon_within < timedelta(0):
        raise ValueError("due_soon_within must not be negative")
    if remaining < timedelta(0):
        overdue = duration_text(remaining)
        return SlaState(kind="breached", text=f"breached {overdue} ago", icon="alert", label=f"Breached: {overdue} ago")
    if remaining == timedelta(0):
        return SlaState(kind="due_soon", text="due now", icon="alarm", label="Due now")
    text = f"{duration_text(remaining)} left"
    if remaining <= due_soon_within:
        return SlaState(kind="due_soon", text=text, icon="alarm", label=f"Due soon: {text}")
    return SlaState(kind="on_track", text=text, icon="clock", label=f"On track: {text}")


def duration_text(delta: timedelta) -> str:
    """Compact text for the length of ``delta``; the sign is the caller's ("left" or "ago").

    "less than 1 min" under a minute, "28 min" under an hour, "1 h 10 m" or "4 h" under 48 hours, "2 d 3 h" or
    "2 d" beyond. Always floors to the last unit shown, for time left and time overdue alike: a countdown never
    claims more time than there is, and both texts change exactly at whole minutes (hours past 48 h), so a list
    refreshed once a minute ticks evenly.
    """
    minutes = abs(delta) // timedelta(minutes=1)
    if minutes == 0:
        return "less than 1 min"
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h" if minutes == 0 else f"{hours} h {minutes} m"
    days, hours = divmod(hours, 24)
    return f"{days} d" if hours == 0 else f"{days} d {hours} h"


# --- helpers -----------------------------------------------------------------------------------------------


def _zone_named(name: str) -> ZoneInfo:
    if not isinstance(name, str) or not name:
        raise CalendarError("time_zone", "The time zone must be a name like Europe/Berlin")
    try:
        return ZoneInfo(name)  # ZoneInfo caches by key, so calling this per operation is cheap.
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # ValueError covers keys that are paths ("../x", "/etc/x") or files that are not zone data.
        raise CalendarError("time_zone", f"Unknown time zone {name!r}") from None


def _first_instant_at(wall: datetime, zone: ZoneInfo) -> datetime:
    """The first instant (UTC) at which the clock in ``zone`` reads ``wall`` (naive) or later.

    For a repeated wall time that is its first occurrence (fold=0); for a skipped one, the moment the clocks jump.
    """
    instant = wall.replace(tzinfo=zone).astimezone(UTC)
    if instant.astimezone(zone).replace(tzinfo=None) == wall:
        return instant
    # ``wall`` is skipped. Per PEP 495 its two folds map to either side of the jump; the jump lies between them
    # and zoneinfo does not expose it, so bisect to the microsecond (about 32 steps; this happens once a year).
    early, late = sorted((wall.replace(tzinfo=zone, fold=1).astimezone(UTC), instant))
    while late - early > _ONE_MICROSECOND:
        middle = early + (late - early) / 2
        if middle.astimezone(zone).replace(tzinfo=None) >= wall:
            late = middle
        else:
            early = middle
    return late


def _as_utc(moment: datetime, name: str) -> datetime:
    if not isinstance(moment, datetime) or moment.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")
    return moment.astimezone(UTC)


def _check_clock_time(field: str, label: str, value: object) -> None:
    if not isinstance(value, time) or value.tzinfo is not None:
        raise CalendarError(field, f"{label} {value!r} is not a time of day like 09:00")
    if value.second or value.microsecond:
        raise CalendarError(field, f"{label} must be whole minutes, like 09:00, not {value.isoformat()}")


def _parse_clock_time(field: str, label: str, value: object) -> time | None:
    """Parse "HH:MM"; "24:00", midnight at the end of the day, is ``None`` (a closing time only)."""
    if isinstance(value, time):
        return value
    match = _TIME_PATTERN.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise CalendarError(field, f"{label} {value!r} is not a time like 09:00")
    hour, minute = int(match[1]), int(match[2])
    if (hour, minute) == (24, 0):
        return None
    if hour > 23 or minute > 59:
        raise CalendarError(field, f"{label} {value!r} is not a time like 09:00")
    return time(hour, minute)


def _parse_date(value: object) -> date:
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, str) and _DATE_PATTERN.fullmatch(value.strip()):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            pass  # 2025-02-30: the right shape, not a real day; reported below like any other bad date.
    raise CalendarError("holidays", f"Holiday {value!r} is not a date like 2025-12-25")


# Last, because constructing a calendar validates it with the helpers above.
ALWAYS = BusinessCalendar(working_days=(0, 1, 2, 3, 4, 5, 6), day_start=_MIDNIGHT, day_end=None)
"""24/7 in UTC: business hours are plain elapsed hours."""
