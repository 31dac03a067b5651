"""Schedule triggers from a frozen clock: each slot fires once from its timer row, DST-correct, with the missed-time
policy (after downtime each missed time runs once, oldest first, up to a cap; `skip_missed` runs none), pause and
resume, a schedule that can no longer compute its times, and field errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from apps.audit.models import AuditEvent
from apps.core.exceptions import ValidationFailed
from apps.runs.models import Run, ScheduleTimer, TriggerFiring
from apps.runs.sweeper import sweep
from apps.runs.triggers import schedules_fire_due, trigger_create, trigger_pause, trigger_resume
from apps.workflows.triggers import schedule_describe, schedule_next

pytestmark = pytest.mark.django_db

MONDAY_8_BERLIN = {"cron": "0 8 * * 1", "timezone": "Europe/Berlin"}


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def _monday_trigger(analyst, workflow, now, **extra):
    trigger, secret = trigger_create(
        actor=analyst,
        workflow=workflow,
        kind="schedule",
        name="Monday digest",
        config={**MONDAY_8_BERLIN, **extra},
        now=now,
    )
    assert secret == ""
    return trigger


def _fire_every_minute(start: datetime, end: datetime) -> list[int]:
    """Sweep the schedules once a minute from start to end (a beat that never stops); the minutes that fired."""
    fired = []
    minute = 0
    now = start
    while now <= end:
        if schedules_fire_due(now):
            fired.append(minute)
        now += timedelta(minutes=1)
        minute += 1
    return fired


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        # Winter (CET, UTC+1): Monday 8 December 2025, 08:00 Berlin is 07:00 UTC.
        (utc(2025, 12, 7, 12), utc(2025, 12, 8, 7)),
        # Summer (CEST, UTC+2): Monday 6 July 2026, 08:00 Berlin is 06:00 UTC.
        (utc(2026, 7, 5, 12), utc(2026, 7, 6, 6)),
        # The Monday after clocks go forward (29 March 2026): already summer time.
        (utc(2026, 3, 28, 12), utc(2026, 3, 30, 6)),
        # The Monday after clocks go back (25 October 2026): winter time again.
        (utc(2026, 10, 24, 12), utc(2026, 10, 26, 7)),
    ],
)
def test_monday_eight_berlin_fires_once_at_the_right_utc_hour(analyst, digest_workflow, start, expected):
    trigger = _monday_trigger(analyst, digest_workflow, start)
    assert ScheduleTimer.objects.get(trigger=trigger, fired_at__isnull=True).fire_at == expected
    # Sweep every minute across the whole day before and after: exactly one firing, at the expected minute.
    window_start = expected - timedelta(hours=26)
    fired = _fire_every_minute(window_start, expected + timedelta(hours=26))
    assert [window_start + timedelta(minutes=m) for m in fired] == [expected]
    [run] = Run.objects.filter(workflow=digest_workflow)
    assert run.trigger == "schedule" and run.initiator == analyst
    assert run.inputs["scheduled_at"] == expected.isoformat().replace("+00:00", "Z")
    assert run.inputs["scheduled_at_local"].endswith("T08:00:00+01:00" if expected.hour == 7 else "T08:00:00+02:00")
    [firing] = TriggerFiring.objects.filter(trigger=trigger)
    assert firing.outcome == "started" and firing.run == run
    assert AuditEvent.objects.filter(verb="trigger.started", target_id=str(trigger.pk)).count() == 1
    # The next Monday is armed, one week later at 08:00 Berlin.
    next_row = ScheduleTimer.objects.get(trigger=trigger, fired_at__isnull=True)
    assert next_row.fire_at == schedule_next("0 8 * * 1", "Europe/Berlin", expected)[0]
    assert next_row.fire_at.astimezone(ZoneInfo("Europe/Berlin")).strftime("%a %H:%M") == "Mon 08:00"


def test_a_wall_time_that_happens_twice_fires_once():
    # 02:30 happens twice in Berlin on 25 October 2026: a daily 02:30 fires at the first one only.
    slots = schedule_next("30 2 * * *", "Europe/Berlin", utc(2026, 10, 23, 12), count=4)
    assert [slot.astimezone(UTC) for slot in slots] == [
        utc(2026, 10, 24, 0, 30),
        utc(2026, 10, 25, 0, 30),
        utc(2026, 10, 26, 1, 30),
        utc(2026, 10, 27, 1, 30),
    ]
    # 02:30 does not exist on 29 March 2026: it fires once, at the first instant after the gap.
    slots = schedule_next("30 2 * * *", "Europe/Berlin", utc(2026, 3, 27, 12), count=3)
    assert [slot.astimezone(UTC) for slot in slots] == [
        utc(2026, 3, 28, 1, 30),
        utc(2026, 3, 29, 1),
        utc(2026, 3, 30, 0, 30),
    ]


def test_the_same_slot_swept_twice_starts_one_run(analyst, digest_workflow):
    start = utc(2025, 12, 7, 12)
    trigger = _monday_trigger(analyst, digest_workflow, start)
    due = utc(2025, 12, 8, 7, 0, 5)
    assert schedules_fire_due(due) == 1
    assert schedules_fire_due(due) == 0  # the row is fired; the next one is a week away
    assert sweep(now=due)["schedules"] == 0
    assert Run.objects.filter(workflow=digest_workflow).count() == 1
    assert ScheduleTimer.objects.filter(trigger=trigger).count() == 2  # the fired row and the next Monday's


def test_after_downtime_every_missed_time_runs_once_oldest_first(analyst, digest_workflow):
    start = utc(2025, 12, 1, 12)
    trigger = _monday_trigger(analyst, digest_workflow, start)
    # The scheduler was down for three Mondays (8, 15 and 22 December); it comes back on Tuesday the 23rd.
    back = utc(2025, 12, 23, 9)
    assert schedules_fire_due(back) == 3
    runs = list(Run.objects.filter(workflow=digest_workflow).order_by("pk"))
    assert [run.inputs["scheduled_at"] for run in runs] == [
        "2025-12-08T07:00:00Z",
        "2025-12-15T07:00:00Z",
        "2025-12-22T07:00:00Z",
    ]
    outcomes = list(TriggerFiring.objects.filter(trigger=trigger).order_by("pk").values_list("outcome", "run"))
    assert outcomes == [("started", run.pk) for run in runs]
    assert ScheduleTimer.objects.get(trigger=trigger, fired_at__isnull=True).fire_at == utc(2025, 12, 29, 7)
    # Swept again (another beat, a restart): nothing more runs.
    assert schedules_fire_due(back) == 0 and sweep(now=back)["schedules"] == 0
    assert Run.objects.filter(workflow=digest_workflow).count() == 3


def test_catch_up_is_capped_and_the_older_missed_times_are_counted_as_skipped(analyst, digest_workflow):
    from apps.runs.triggers import CATCH_UP_LIMIT

    trigger, _ = trigger_create(
        actor=analyst,
        workflow=digest_workflow,
        kind="schedule",
        name="Hourly",
        config={"cron": "0 * * * *", "timezone": "Europe/Berlin"},
        now=utc(2025, 12, 1, 0, 30),
    )
    # Down from 01:00 UTC on the 1st to 02:10 UTC on the 3rd: 50 hourly times missed (01:00 ... 02:00).
    back = utc(2025, 12, 3, 2, 10)
    assert schedules_fire_due(back) == CATCH_UP_LIMIT == 24
    runs = list(Run.objects.filter(workflow=digest_workflow).order_by("pk"))
    assert [run.inputs["scheduled_at"] for run in runs] == [
        (utc(2025, 12, 2, 3) + timedelta(hours=hour)).isoformat().replace("+00:00", "Z") for hour in range(24)
    ]
    [skipped] = TriggerFiring.objects.filter(trigger=trigger, outcome="skipped")
    assert skipped.detail.startswith("26 scheduled times missed") and "at most the 24 most recent" in skipped.detail
    assert TriggerFiring.objects.filter(trigger=trigger, outcome="started").count() == 24
    assert ScheduleTimer.objects.get(trigger=trigger, fired_at__isnull=True).fire_at == utc(2025, 12, 3, 3)


def test_catch_up_keeps_wall_times_across_a_dst_change(analyst, digest_workflow):
    # Daily 08:00 Berlin, down from Saturday 24 to Tuesday 27 October 2026 (clocks went back on the 25th).
    trigger, _ = trigger_create(
        actor=analyst,
        workflow=digest_workflow,
        kind="schedule",
        name="Daily",
        config={"cron": "0 8 * * *", "timezone": "Europe/Berlin"},
        now=utc(2026, 10, 24, 5),
    )
    assert schedules_fire_due(utc(2026, 10, 27, 9)) == 4
    local = list(
        Run.objects.filter(workflow=digest_workflow).order_by("pk").values_list("inputs__scheduled_at_local", flat=True)
    )
    assert local == [
        "2026-10-24T08:00:00+02:00",
        "2026-10-25T08:00:00+01:00",
        "2026-10-26T08:00:00+01:00",
        "2026-10-27T08:00:00+01:00",
    ]
    assert TriggerFiring.objects.filter(trigger=trigger).exclude(outcome="started").count() == 0


def test_a_schedule_that_cannot_compute_its_times_is_recorded_paused_and_does_not_block_others(
    analyst, digest_workflow
):
    from apps.workflows.models import Trigger

    broken = _monday_trigger(analyst, digest_workflow, utc(2025, 12, 7, 12))
    healthy, _ = trigger_create(
        actor=analyst,
        workflow=digest_workflow,
        kind="schedule",
        name="Monday UTC",
        config={"cron": "0 8 * * 1", "timezone": "UTC"},
        now=utc(2025, 12, 7, 12),
    )
    # A time zone the machine's tz database no longer has (an upgrade removed it): every computation raises.
    Trigger.objects.filter(pk=broken.pk).update(config={**MONDAY_8_BERLIN, "timezone": "Europe/Gone"})
    report = sweep(now=utc(2025, 12, 8, 8, 0, 5))
    assert report["schedules"] == 2
    [failed] = TriggerFiring.objects.filter(trigger=broken)
    assert failed.outcome == "failed" and "it was paused" in failed.detail and "Europe/Gone" in failed.detail
    broken.refresh_from_db()
    assert not broken.enabled and broken.paused_at is not None
    assert AuditEvent.objects.filter(verb="trigger.paused", target_id=str(broken.pk)).exists()
    assert [f.outcome for f in TriggerFiring.objects.filter(trigger=healthy)] == ["started"]
    # The next sweeps pass over it quietly.
    assert sweep(now=utc(2025, 12, 8, 8, 1))["schedules"] == 0


def test_a_due_time_missed_once_still_runs_late(analyst, digest_workflow):
    trigger = _monday_trigger(analyst, digest_workflow, utc(2025, 12, 7, 12))
    # Down over Monday 07:00 UTC, back at 10:00: the one missed time runs, late, with its scheduled time.
    assert schedules_fire_due(utc(2025, 12, 8, 10)) == 1
    [run] = Run.objects.filter(workflow=digest_workflow)
    assert run.inputs["scheduled_at"] == "2025-12-08T07:00:00Z"
    assert list(TriggerFiring.objects.filter(trigger=trigger).values_list("outcome", flat=True)) == ["started"]


def test_skip_missed_runs_nothing_after_downtime_but_runs_on_time(analyst, digest_workflow):
    trigger = _monday_trigger(analyst, digest_workflow, utc(2025, 12, 1, 12), skip_missed=True)
    assert schedules_fire_due(utc(2025, 12, 16, 9)) == 1  # two Mondays missed, the latest 26 hours late
    assert not Run.objects.filter(workflow=digest_workflow).exists()
    [skipped] = TriggerFiring.objects.filter(trigger=trigger)
    assert skipped.outcome == "skipped" and skipped.detail.startswith("2 scheduled times missed")
    # The next Monday, swept 20 seconds after its time, is on time: it runs.
    assert schedules_fire_due(utc(2025, 12, 22, 7, 0, 20)) == 1
    assert Run.objects.filter(workflow=digest_workflow).count() == 1


def test_pause_stops_firing_and_resume_counts_the_skipped_times(analyst, digest_workflow):
    trigger = _monday_trigger(analyst, digest_workflow, utc(2025, 12, 1, 12))
    trigger_pause(actor=analyst, trigger=trigger, now=utc(2025, 12, 2, 9))
    assert not ScheduleTimer.objects.filter(trigger=trigger, fired_at__isnull=True).exists()
    assert schedules_fire_due(utc(2025, 12, 30, 9)) == 0
    trigger.refresh_from_db()
    resumed, skipped = trigger_resume(actor=analyst, trigger=trigger, now=utc(2025, 12, 24, 12))
    assert skipped == 3  # 8, 15 and 22 December
    assert resumed.enabled
    assert ScheduleTimer.objects.get(trigger=trigger, fired_at__isnull=True).fire_at == utc(2025, 12, 29, 7)
    assert not Run.objects.filter(workflow=digest_workflow).exists()
    [row] = TriggerFiring.objects.filter(trigger=trigger)
    assert row.outcome == "skipped" and row.detail.startswith("3 scheduled times passed while the trigger was paused")
    verbs = set(
        AuditEvent.objects.filter(target_id=str(trigger.pk), target_type="workflows.trigger").values_list(
            "verb", flat=True
        )
    )
    assert {"trigger.created", "trigger.paused", "trigger.resumed", "trigger.skipped"} <= verbs


@pytest.mark.parametrize(
    ("config", "field", "message"),
    [
        ({"cron": "0 8 * *", "timezone": "UTC"}, "cron", "A schedule has 5 fields"),
        ({"cron": "0 25 * * 1", "timezone": "UTC"}, "cron", "The hour field “25” is out of range: use 0 to 23."),
        ({"cron": "0 8 * * 1 2026", "timezone": "UTC"}, "cron", "this has 6"),
        ({"cron": "0 8 * * 1", "timezone": "Europe/Atlantis"}, "timezone", "not a time zone name"),
        ({"cron": "0 8 * * 1", "timezone": ""}, "timezone", "Choose a time zone"),
        ({"cron": "0 0 30 2 *", "timezone": "UTC"}, "cron", "never fires"),
    ],
)
def test_a_schedule_that_cannot_parse_is_a_field_error(analyst, digest_workflow, config, field, message):
    with pytest.raises(ValidationFailed) as refusal:
        trigger_create(actor=analyst, workflow=digest_workflow, kind="schedule", name="Bad", config=config)
    assert message in " ".join(refusal.value.fields[field])
    assert not ScheduleTimer.objects.exists()


def test_descriptions_read_like_a_person_wrote_them():
    assert schedule_describe("0 8 * * 1") == "Every Monday at 08:00"
    assert schedule_describe("30 7 * * 1-5") == "Every weekday at 07:30"
    assert schedule_describe("*/15 * * * *") == "Every 15 minutes"
    assert schedule_describe("0 9 1 * *") == "On day 1 of the month at 09:00"
    assert schedule_describe("0 9,17 * * *") == "Every day at 09:00 and 17:00"
    assert schedule_describe("0 6 * 1 1") == "Every Monday in January at 06:00"
    assert schedule_describe("5 4 L * *") == "On the cron schedule “5 4 L * *”"


def test_a_firing_the_workflow_refuses_is_recorded_and_the_next_time_is_armed(analyst, digest_workflow):
    from apps.workflows.services import workflow_archive

    trigger = _monday_trigger(analyst, digest_workflow, utc(2025, 12, 7, 12))
    workflow_archive(actor=analyst, workflow=digest_workflow)
    assert schedules_fire_due(utc(2025, 12, 8, 7)) == 1
    [row] = TriggerFiring.objects.filter(trigger=trigger)
    assert row.outcome == "refused" and "archived" in row.detail
    assert not Run.objects.filter(workflow=digest_workflow).exists()
    assert ScheduleTimer.objects.get(trigger=trigger, fired_at__isnull=True).fire_at == utc(2025, 12, 15, 7)
