"""The business calendar behind approval SLAs, and how the inbox words an item's SLA. Pure: no database.

Dates are in 2025: Monday 6 January starts a plain week; Europe/Berlin changes clocks on Sunday 30 March
(02:00 → 03:00) and Sunday 26 October (03:00 → 02:00); America/New_York on Sunday 9 March and Sunday 2 November
(both at 02:00).
"""

from __future__ import annotations

import json
import random
import time as perf
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from apps.approvals.calendar import (
    ALWAYS,
    BusinessCalendar,
    CalendarError,
    SlaState,
    duration_text,
    escalation_times,
    sla_state,
)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
EVERY_DAY = (0, 1, 2, 3, 4, 5, 6)

OFFICE = BusinessCalendar()  # Monday to Friday, 09:00–17:00 UTC
BERLIN_OFFICE = BusinessCalendar(time_zone="Europe/Berlin")
NEW_YORK_OFFICE = BusinessCalendar(time_zone="America/New_York")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def berlin(*args: int) -> datetime:
    return datetime(*args, tzinfo=BERLIN)


def new_york(*args: int) -> datetime:
    return datetime(*args, tzinfo=NEW_YORK)


MONDAY = (2025, 1, 6)
TUESDAY = (2025, 1, 7)
WEDNESDAY = (2025, 1, 8)
FRIDAY = (2025, 1, 10)
SATURDAY = (2025, 1, 11)
NEXT_MONDAY = (2025, 1, 13)


# --- add ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "hours", "due"),
    [
        pytest.param(utc(*MONDAY, 10), 2, utc(*MONDAY, 12), id="within-one-day"),
        pytest.param(utc(*MONDAY, 16), 2, utc(*TUESDAY, 10), id="over-the-night"),
        pytest.param(utc(*FRIDAY, 16), 2, utc(*NEXT_MONDAY, 10), id="over-the-weekend"),
        pytest.param(utc(*SATURDAY, 12), 1, utc(*NEXT_MONDAY, 10), id="starting-on-a-weekend"),
        pytest.param(utc(*MONDAY, 7), 1, utc(*MONDAY, 10), id="starting-before-opening"),
        pytest.param(utc(*MONDAY, 9), 8, utc(*MONDAY, 17), id="exactly-opening-to-exactly-closing"),
        pytest.param(utc(*MONDAY, 17), 1, utc(*TUESDAY, 10), id="starting-exactly-at-closing"),
        pytest.param(utc(*MONDAY, 16), 1, utc(*MONDAY, 17), id="due-exactly-at-closing-not-next-morning"),
        pytest.param(utc(*MONDAY, 9), 1.5, utc(*MONDAY, 10, 30), id="fractional"),
        pytest.param(utc(*MONDAY, 16, 59), 0.25, utc(*TUESDAY, 9, 14), id="fractional-over-the-night"),
        pytest.param(utc(*MONDAY, 9), 40, utc(*FRIDAY, 17), id="a-whole-week"),
        pytest.param(utc(*MONDAY, 9), 40.5, utc(*NEXT_MONDAY, 9, 30), id="a-week-and-a-bit"),
    ],
)
def test_add_counts_only_working_hours(start: datetime, hours: float, due: datetime) -> None:
    assert OFFICE.add(start, hours) == due


@pytest.mark.parametrize(
    ("start", "due"),
    [
        pytest.param(utc(*MONDAY, 10, 15), utc(*MONDAY, 10, 15), id="open-is-now"),
        pytest.param(utc(*MONDAY, 9), utc(*MONDAY, 9), id="at-opening"),
        pytest.param(utc(*MONDAY, 17), utc(*TUESDAY, 9), id="at-closing-is-next-opening"),
        pytest.param(utc(*SATURDAY, 12), utc(*NEXT_MONDAY, 9), id="weekend-is-next-opening"),
    ],
)
def test_adding_zero_hours_is_the_next_opening(start: datetime, due: datetime) -> None:
    assert OFFICE.add(start, 0) == due == OFFICE.next_open(start)


def test_add_skips_holidays() -> None:
    calendar = BusinessCalendar(holidays=(date(*TUESDAY),))
    assert calendar.add(utc(*MONDAY, 16), 2) == utc(*WEDNESDAY, 10)
    assert calendar.add(utc(*TUESDAY, 12), 1) == utc(*WEDNESDAY, 10)


def test_add_returns_utc_from_any_input_zone() -> None:
    due = BERLIN_OFFICE.add(berlin(*MONDAY, 16), 2)  # Berlin is UTC+1 in January
    assert due == berlin(*TUESDAY, 10) == utc(*TUESDAY, 9)
    assert due.tzinfo is UTC


def test_add_two_thousand_hours_steps_by_day_not_by_minute() -> None:
    # 2,000 h is 250 eight-hour weekdays; count them off independently of the calendar code.
    day, weekdays = date(*MONDAY), 0
    while True:
        if day.weekday() < 5:
            weekdays += 1
            if weekdays == 250:
                break
        day += timedelta(days=1)
    started = perf.perf_counter()
    due = OFFICE.add(utc(*MONDAY, 9), 2000)
    elapsed = perf.perf_counter() - started
    assert due == datetime.combine(day, time(17), tzinfo=UTC)
    assert elapsed < 1.0, f"2,000 business hours took {elapsed:.3f} s"


def test_a_calendar_without_working_time_raises_instead_of_hanging() -> None:
    every_weekday_for_eleven_years = tuple(
        day for day in (date(2025, 1, 1) + timedelta(days=n) for n in range(11 * 366)) if day.weekday() < 5
    )
    calendar = BusinessCalendar(holidays=every_weekday_for_eleven_years)
    started = perf.perf_counter()
    with pytest.raises(ValueError, match="ten years"):
        calendar.add(utc(*MONDAY, 9), 1)
    with pytest.raises(ValueError, match="ten years"):
        calendar.next_open(utc(*MONDAY, 9))
    assert perf.perf_counter() - started < 2.0


@pytest.mark.parametrize("hours", [-1, float("nan"), float("inf"), 1e12])
def test_add_refuses_impossible_hours(hours: float) -> None:
    with pytest.raises(ValueError):
        OFFICE.add(utc(*MONDAY, 9), hours)


def test_naive_datetimes_are_refused() -> None:
    naive = datetime(*MONDAY, 9)
    with pytest.raises(ValueError, match="timezone-aware"):
        OFFICE.add(naive, 1)
    with pytest.raises(ValueError, match="timezone-aware"):
        OFFICE.is_open(naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        OFFICE.next_open(naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        OFFICE.business_hours_between(naive, utc(*MONDAY, 10))
    with pytest.raises(ValueError, match="timezone-aware"):
        sla_state(naive, utc(*MONDAY, 10))


# --- daylight saving ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "spring", "autumn"),
    [
        pytest.param(BERLIN, date(2025, 3, 30), date(2025, 10, 26), id="berlin"),
        pytest.param(NEW_YORK, date(2025, 3, 9), date(2025, 11, 2), id="new-york"),
    ],
)
def test_dst_change_outside_working_hours_keeps_the_day_at_eight_hours(
    zone: ZoneInfo, spring: date, autumn: date
) -> None:
    calendar = BusinessCalendar(time_zone=str(zone), working_days=EVERY_DAY)
    for change_day in (spring, autumn):
        midnight = datetime.combine(change_day, time(0), tzinfo=zone)
        next_midnight = datetime.combine(change_day + timedelta(days=1), time(0), tzinfo=zone)
        assert calendar.business_hours_between(midnight, next_midnight) == 8
        # From 16:00 local the day before, two hours end at 10:00 local on the change day, whatever its offset.
        day_before_16 = datetime.combine(change_day - timedelta(days=1), time(16), tzinfo=zone)
        assert calendar.add(day_before_16, 2) == datetime.combine(change_day, time(10), tzinfo=zone)


@pytest.mark.parametrize(
    ("zone", "spring", "autumn"),
    [
        pytest.param(BERLIN, date(2025, 3, 30), date(2025, 10, 26), id="berlin"),
        pytest.param(NEW_YORK, date(2025, 3, 9), date(2025, 11, 2), id="new-york"),
    ],
)
def test_dst_change_inside_working_hours_counts_real_elapsed_time(zone: ZoneInfo, spring: date, autumn: date) -> None:
    around_the_clock = BusinessCalendar(time_zone=str(zone), working_days=EVERY_DAY, day_start=time(0), day_end=None)
    night_shift = BusinessCalendar(time_zone=str(zone), working_days=EVERY_DAY, day_start=time(1), day_end=time(5))
    for change_day, real_day_hours in ((spring, 23), (autumn, 25)):
        midnight = datetime.combine(change_day, time(0), tzinfo=zone)
        next_midnight = datetime.combine(change_day + timedelta(days=1), time(0), tzinfo=zone)
        assert around_the_clock.business_hours_between(midnight, next_midnight) == real_day_hours
        assert night_shift.business_hours_between(midnight, next_midnight) == real_day_hours - 20
        # 24 business hours from midnight land an hour past (spring) or short of (autumn) the next midnight.
        expected = next_midnight + timedelta(hours=24 - real_day_hours)
        assert around_the_clock.add(midnight, 24) == expected


def test_dst_change_over_a_weekend_keeps_local_opening_hours() -> None:
    # Friday 16:00 CET + 2 h = Monday 10:00, which is CEST after the Sunday change: 08:00 UTC, not 09:00.
    assert BERLIN_OFFICE.add(berlin(2025, 3, 28, 16), 2) == utc(2025, 3, 31, 8)
    # New York falls back on Sunday 2 November: Monday 10:00 EST is 15:00 UTC.
    assert NEW_YORK_OFFICE.add(new_york(2025, 10, 31, 16), 2) == utc(2025, 11, 3, 15)


def test_an_opening_time_the_clocks_skip_opens_when_they_jump() -> None:
    calendar = BusinessCalendar(
        time_zone="Europe/Berlin", working_days=EVERY_DAY, day_start=time(2, 30), day_end=time(5)
    )
    # 30 March: there is no 02:30; the clocks jump from 02:00 CET to 03:00 CEST at 01:00 UTC.
    assert not calendar.is_open(utc(2025, 3, 30, 0, 59))
    assert calendar.is_open(utc(2025, 3, 30, 1, 0))
    assert calendar.next_open(utc(2025, 3, 30, 0, 0)) == utc(2025, 3, 30, 1, 0)
    assert calendar.business_hours_between(utc(2025, 3, 30, 0), utc(2025, 3, 31, 0)) == 2
    # 26 October: 02:30 happens twice; the day opens at the first (CEST) and runs until 05:00 CET.
    assert calendar.next_open(utc(2025, 10, 26, 0, 0)) == utc(2025, 10, 26, 0, 30)
    assert calendar.business_hours_between(utc(2025, 10, 26, 0), utc(2025, 10, 27, 0)) == 3.5


# --- is_open / next_open -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "open_"),
    [
        pytest.param(utc(*MONDAY, 9), True, id="exactly-opening"),
        pytest.param(utc(*MONDAY, 16, 59, 59, 999999), True, id="last-microsecond"),
        pytest.param(utc(*MONDAY, 17), False, id="exactly-closing"),
        pytest.param(utc(*MONDAY, 8, 59), False, id="before-opening"),
        pytest.param(utc(*SATURDAY, 12), False, id="weekend"),
    ],
)
def test_is_open(moment: datetime, open_: bool) -> None:
    assert OFFICE.is_open(moment) is open_


def test_holidays_are_closed() -> None:
    calendar = BusinessCalendar(holidays=(date(*MONDAY),))
    assert not calendar.is_open(utc(*MONDAY, 12))
    assert calendar.next_open(utc(*MONDAY, 12)) == utc(*TUESDAY, 9)


def test_holidays_and_hours_are_local_to_the_calendar_zone() -> None:
    # 08:30 UTC on a January Monday is 09:30 in Berlin: open there, closed in the UTC office.
    assert BERLIN_OFFICE.is_open(utc(*MONDAY, 8, 30))
    assert not OFFICE.is_open(utc(*MONDAY, 8, 30))
    # Friday 23:30 in New York is already Saturday in UTC, and still a Friday (closed at night) there.
    assert NEW_YORK_OFFICE.next_open(utc(*SATURDAY, 4, 30)) == new_york(*NEXT_MONDAY, 9)


def test_next_open_returns_utc() -> None:
    opened = OFFICE.next_open(berlin(*MONDAY, 11))  # 10:00 UTC, open
    assert opened == utc(*MONDAY, 10)
    assert opened.tzinfo is UTC


def test_always_is_open_around_the_clock() -> None:
    for moment in (utc(*SATURDAY, 0), utc(*SATURDAY, 23, 59, 59), utc(2025, 12, 25, 3)):
        assert ALWAYS.is_open(moment)
        assert ALWAYS.next_open(moment) == moment
        assert ALWAYS.add(moment, 30.5) == moment + timedelta(hours=30.5)
    assert ALWAYS.business_hours_between(utc(*MONDAY, 0), utc(*NEXT_MONDAY, 0)) == 7 * 24


# --- business_hours_between --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "hours"),
    [
        pytest.param(utc(*MONDAY, 10), utc(*MONDAY, 10), 0, id="same-instant"),
        pytest.param(utc(*MONDAY, 10), utc(*MONDAY, 12, 30), 2.5, id="within-a-day"),
        pytest.param(utc(*FRIDAY, 16), utc(*NEXT_MONDAY, 10), 2, id="over-the-weekend"),
        pytest.param(utc(*SATURDAY, 0), utc(*SATURDAY, 23), 0, id="all-weekend"),
        pytest.param(utc(*MONDAY, 17), utc(*TUESDAY, 9), 0, id="closing-to-opening"),
        pytest.param(utc(*MONDAY, 0), utc(*NEXT_MONDAY, 0), 40, id="a-week"),
        pytest.param(utc(*NEXT_MONDAY, 10), utc(*FRIDAY, 16), -2, id="negative-when-reversed"),
    ],
)
def test_business_hours_between(start: datetime, end: datetime, hours: float) -> None:
    assert OFFICE.business_hours_between(start, end) == hours


def test_business_hours_between_skips_holidays() -> None:
    calendar = BusinessCalendar(holidays=(date(*TUESDAY),))
    assert calendar.business_hours_between(utc(*MONDAY, 0), utc(*NEXT_MONDAY, 0)) == 32


PROPERTY_CALENDARS = [
    OFFICE,
    ALWAYS,
    BERLIN_OFFICE,
    BusinessCalendar(
        time_zone="America/New_York",
        working_days=(0, 1, 2, 3, 5),
        day_start=time(7, 30),
        day_end=time(19, 15),
        holidays=(date(2025, 3, 10), date(2025, 11, 3), date(2025, 12, 25)),
    ),
    BusinessCalendar(time_zone="Europe/Berlin", working_days=EVERY_DAY, day_start=time(0), day_end=None),
]


@pytest.mark.parametrize(
    "calendar", PROPERTY_CALENDARS, ids=["utc-office", "always", "berlin-office", "new-york-odd", "berlin-24-7"]
)
def test_between_inverts_add(calendar: BusinessCalendar) -> None:
    rng = random.Random(20250330)
    year_start = utc(2025, 1, 1)
    for _ in range(300):
        start = year_start + timedelta(seconds=rng.uniform(0, 365 * 86400))
        hours = rng.choice([0.0, rng.uniform(0, 1), rng.uniform(0, 40), rng.uniform(0, 2000)])
        due = calendar.add(start, hours)
        assert due >= start
        assert calendar.business_hours_between(start, due) == pytest.approx(hours, abs=1 / 3600)
        assert calendar.business_hours_between(due, start) == pytest.approx(-hours, abs=1 / 3600)


def _reference_is_open(calendar: BusinessCalendar, instant: datetime) -> bool:
    """The naive definition, a wall clock check; it agrees whenever no opening or closing is in a DST change."""
    local = instant.astimezone(ZoneInfo(calendar.time_zone))
    end = calendar.day_end or time.max
    return (
        local.weekday() in calendar.working_days
        and local.date() not in calendar.holidays
        and calendar.day_start <= local.time() < end
    )


@pytest.mark.parametrize("calendar", PROPERTY_CALENDARS[2:4], ids=["berlin-office", "new-york-odd"])
def test_add_agrees_with_a_minute_by_minute_count_across_dst(calendar: BusinessCalendar) -> None:
    rng = random.Random(7)
    for window_start in (utc(2025, 3, 5), utc(2025, 10, 22), utc(2025, 10, 29)):
        for _ in range(6):
            start = window_start + timedelta(minutes=rng.randrange(7 * 24 * 60))
            minutes = rng.randrange(0, 20 * 60)
            cursor, counted = start, 0
            if minutes == 0:
                while not _reference_is_open(calendar, cursor):
                    cursor += timedelta(minutes=1)
            while counted < minutes:
                # Openings and closings fall on whole minutes, so each minute is open or closed throughout.
                counted += _reference_is_open(calendar, cursor)
                cursor += timedelta(minutes=1)
            assert calendar.add(start, minutes / 60) == cursor, (start, minutes)


# --- escalation_times --------------------------------------------------------------------------------------


def test_escalation_times_fire_at_fractions_of_business_time() -> None:
    # An 8 h SLA created Friday 16:00: one hour on Friday, the rest on Monday.
    times = escalation_times(OFFICE, utc(*FRIDAY, 16), 8, (0.5, 0.8, 1.0))
    assert times == [utc(*NEXT_MONDAY, 12), utc(*NEXT_MONDAY, 14, 24), utc(*NEXT_MONDAY, 16)]


def test_escalation_times_keep_the_given_order_and_allow_after_the_breach() -> None:
    times = escalation_times(OFFICE, utc(*MONDAY, 9), 4, [1.5, 0, 1])
    assert times == [utc(*MONDAY, 15), utc(*MONDAY, 9), utc(*MONDAY, 13)]
    assert escalation_times(OFFICE, utc(*MONDAY, 9), 4, []) == []


@pytest.mark.parametrize(("sla_hours", "fractions"), [(-1, [0.5]), (8, [-0.5]), (8, [float("nan")])])
def test_escalation_times_refuse_negative_input(sla_hours: float, fractions: list[float]) -> None:
    with pytest.raises(ValueError):
        escalation_times(OFFICE, utc(*MONDAY, 9), sla_hours, fractions)


# --- from_dict / to_dict -----------------------------------------------------------------------------------


ROUND_TRIP_CALENDARS = [
    BusinessCalendar(),
    ALWAYS,
    BERLIN_OFFICE,
    BusinessCalendar(
        time_zone="America/New_York",
        working_days=(5, 0, 0),
        day_start=time(7, 30),
        day_end=time(23, 59),
        holidays=(date(2025, 12, 25), date(2025, 1, 1)),
    ),
]


@pytest.mark.parametrize("calendar", ROUND_TRIP_CALENDARS, ids=["default", "always", "berlin-office", "new-york-odd"])
def test_to_dict_round_trips_through_json(calendar: BusinessCalendar) -> None:
    data = json.loads(json.dumps(calendar.to_dict()))
    assert BusinessCalendar.from_dict(data) == calendar
    assert BusinessCalendar.from_dict(data).to_dict() == data


def test_to_dict_shape() -> None:
    assert ALWAYS.to_dict() == {
        "time_zone": "UTC",
        "working_days": [0, 1, 2, 3, 4, 5, 6],
        "day_start": "00:00",
        "day_end": "24:00",
        "holidays": [],
    }
    calendar = BusinessCalendar(time_zone="Europe/Berlin", working_days=(4, 0), holidays=(date(2025, 12, 25),))
    assert calendar.to_dict() == {
        "time_zone": "Europe/Berlin",
        "working_days": [0, 4],
        "day_start": "09:00",
        "day_end": "17:00",
        "holidays": ["2025-12-25"],
    }


def test_from_dict_fills_defaults_and_normalises() -> None:
    assert BusinessCalendar.from_dict({}) == BusinessCalendar()
    calendar = BusinessCalendar.from_dict(
        {"working_days": [4, 0, 0], "day_start": " 8:05 ", "holidays": ["2025-12-26", "2025-12-25", "2025-12-25"]}
    )
    assert calendar.working_days == (0, 4)
    assert calendar.day_start == time(8, 5)
    assert calendar.holidays == (date(2025, 12, 25), date(2025, 12, 26))


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"time_zone": "Europe/Pariss"}, "time_zone", "Unknown time zone 'Europe/Pariss'"),
        ({"time_zone": "../../etc/passwd"}, "time_zone", "Unknown time zone '../../etc/passwd'"),
        ({"time_zone": ""}, "time_zone", "The time zone must be a name like Europe/Berlin"),
        ({"time_zone": 1}, "time_zone", "The time zone must be a name like Europe/Berlin"),
        ({"working_days": []}, "working_days", "Pick at least one working day"),
        ({"working_days": [0, 7]}, "working_days", "Working day 7 is not a weekday: use 0 (Monday) to 6 (Sunday)"),
        ({"working_days": [True]}, "working_days", "Working day True is not a weekday"),
        ({"working_days": "01234"}, "working_days", "Working days must be a list of weekdays"),
        ({"day_start": "17:00", "day_end": "09:00"}, "day_end", "The working day must end after it starts"),
        ({"day_start": "09:00", "day_end": "09:00"}, "day_end", "The working day must end after it starts"),
        ({"day_start": "9am"}, "day_start", "Opening time '9am' is not a time like 09:00"),
        ({"day_start": "24:00"}, "day_start", "The working day cannot open at 24:00"),
        ({"day_end": "25:00"}, "day_end", "Closing time '25:00' is not a time like 09:00"),
        ({"day_end": "17:60"}, "day_end", "Closing time '17:60' is not a time like 09:00"),
        ({"holidays": ["2025-02-30"]}, "holidays", "Holiday '2025-02-30' is not a date like 2025-12-25"),
        ({"holidays": ["25/12/2025"]}, "holidays", "Holiday '25/12/2025' is not a date like 2025-12-25"),
        ({"holidays": "2025-12-25"}, "holidays", "Holidays must be a list of dates"),
        ({"timezone": "UTC"}, "timezone", "Unknown calendar setting 'timezone'"),
    ],
)
def test_from_dict_explains_what_is_wrong(data: dict[str, object], field: str, message: str) -> None:
    with pytest.raises(CalendarError) as caught:
        BusinessCalendar.from_dict(data)
    assert caught.value.field == field
    assert str(caught.value).startswith(message)
    assert isinstance(caught.value, ValueError)


def test_constructor_validates_too() -> None:
    with pytest.raises(CalendarError, match="Pick at least one working day"):
        BusinessCalendar(working_days=())
    with pytest.raises(CalendarError, match="whole minutes"):
        BusinessCalendar(day_start=time(9, 0, 30))
    with pytest.raises(CalendarError, match="not a date"):
        BusinessCalendar(holidays=(datetime(2025, 12, 25, 0, 0),))


def test_calendars_are_hashable_values() -> None:
    assert hash(BusinessCalendar(working_days=(4, 0))) == hash(BusinessCalendar(working_days=(0, 4)))


# --- sla_state ---------------------------------------------------------------------------------------------

NOW = utc(*MONDAY, 12)


@pytest.mark.parametrize(
    ("due_at", "state"),
    [
        pytest.param(None, SlaState("none", "no due time", "minus", "No due time"), id="no-due-time"),
        pytest.param(
            NOW + timedelta(hours=4, seconds=30),
            SlaState("on_track", "4 h left", "clock", "On track: 4 h left"),
            id="four-hours",
        ),
        pytest.param(
            NOW + timedelta(hours=1, seconds=1),
            SlaState("on_track", "1 h left", "clock", "On track: 1 h left"),
            id="just-over-due-soon",
        ),
        pytest.param(
            NOW + timedelta(hours=1),
            SlaState("due_soon", "1 h left", "alarm", "Due soon: 1 h left"),
            id="exactly-due-soon",
        ),
        pytest.param(
            NOW + timedelta(minutes=28, seconds=59),
            SlaState("due_soon", "28 min left", "alarm", "Due soon: 28 min left"),
            id="minutes-round-down",
        ),
        pytest.param(
            NOW + timedelta(seconds=59),
            SlaState("due_soon", "less than 1 min left", "alarm", "Due soon: less than 1 min left"),
            id="59-seconds-left",
        ),
        pytest.param(NOW, SlaState("due_soon", "due now", "alarm", "Due now"), id="exactly-due"),
        pytest.param(
            NOW - timedelta(seconds=1),
            SlaState("breached", "breached less than 1 min ago", "alert", "Breached: less than 1 min ago"),
            id="one-second-late",
        ),
        pytest.param(
            NOW - timedelta(hours=1, minutes=10, seconds=59),
            SlaState("breached", "breached 1 h 10 m ago", "alert", "Breached: 1 h 10 m ago"),
            id="1h10m-breached",
        ),
        pytest.param(
            NOW - timedelta(days=3, hours=2),
            SlaState("breached", "breached 3 d 2 h ago", "alert", "Breached: 3 d 2 h ago"),
            id="days-breached",
        ),
    ],
)
def test_sla_state_wording(due_at: datetime | None, state: SlaState) -> None:
    assert sla_state(NOW, due_at) == state


def test_sla_state_counts_wall_clock_time_not_business_time() -> None:
    # Due Monday 10:00 on the office calendar, seen Friday 16:00: two business hours, but a weekend away.
    state = sla_state(utc(*FRIDAY, 16), utc(*NEXT_MONDAY, 10))
    assert (state.kind, state.text) == ("on_track", "2 d 18 h left")


def test_sla_state_due_soon_window_is_configurable() -> None:
    due_at = NOW + timedelta(hours=3)
    assert sla_state(NOW, due_at).kind == "on_track"
    assert sla_state(NOW, due_at, due_soon_within=timedelta(hours=4)).kind == "due_soon"
    assert sla_state(NOW, due_at, due_soon_within=timedelta(0)).kind == "on_track"
    with pytest.raises(ValueError):
        sla_state(NOW, due_at, due_soon_within=timedelta(minutes=-1))


def test_sla_state_compares_instants_across_zones() -> None:
    assert sla_state(berlin(*MONDAY, 13), utc(*MONDAY, 12)).text == "due now"


# --- duration_text -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(0), "less than 1 min"),
        (timedelta(seconds=45), "less than 1 min"),
        (timedelta(seconds=59, microseconds=999999), "less than 1 min"),
        (timedelta(minutes=1), "1 min"),
        (timedelta(minutes=28, seconds=59), "28 min"),
        (timedelta(minutes=59, seconds=59), "59 min"),
        (timedelta(hours=1), "1 h"),
        (timedelta(hours=1, minutes=10), "1 h 10 m"),
        (timedelta(hours=1, minutes=10, seconds=59), "1 h 10 m"),
        (timedelta(hours=4, seconds=30), "4 h"),
        (timedelta(hours=47, minutes=59, seconds=59), "47 h 59 m"),
        (timedelta(hours=48), "2 d"),
        (timedelta(hours=51, minutes=59), "2 d 3 h"),
        (timedelta(days=10), "10 d"),
        (-timedelta(hours=1, minutes=10), "1 h 10 m"),
        (-timedelta(seconds=30), "less than 1 min"),
    ],
)
def test_duration_text(delta: timedelta, text: str) -> None:
    assert duration_text(delta) == text
