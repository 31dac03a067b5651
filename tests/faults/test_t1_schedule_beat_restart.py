"""T1: a schedule whose due time passes while beat is down fires once when beat comes back, even with two beats.

A schedule trigger's timer row is due a few seconds ahead. Beat (which sends the sweeper every second) is SIGKILLed
before the due time, the due time passes with no beat at all, then two beats start at once (a restarted one and a
stray second one, as a botched deployment would leave), each sending sweeps to two workers.

Expected: the slot fires exactly once (one run, one "started" history row, one `trigger.started` audit event), after
beat is back and not before, its run carries the scheduled time, the run finishes, and the next time is armed.
"""

from __future__ import annotations

import time
from datetime import UTC, timedelta

import pytest
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.runs.models import Run, ScheduleTimer, SingletonLease, TriggerFiring
from apps.runs.tasks import SWEEP_LEASE
from apps.runs.triggers import trigger_create
from tests.faults.harness import wait_runs, wait_until
from tests.support.figures import record_figure
from tests.triggers.conftest import DIGEST_SCHEMA, publish

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.mark.timeout(180)
def test_t1_a_schedule_fires_once_across_a_beat_restart(analyst, team, fleet):
    workflow = publish(analyst, "T1 digest", schema=DIGEST_SCHEMA, fields={"at": "input.scheduled_at"}, team=team)
    trigger, _ = trigger_create(
        actor=analyst,
        workflow=workflow,
        kind="schedule",
        name="Monday digest",
        config={"cron": "0 8 * * 1", "timezone": "Europe/Berlin"},
    )
    fleet.worker(concurrency=2, wait=False)
    fleet.worker(concurrency=2, wait=False)
    beat = fleet.beat(wait=False)
    fleet.ready()
    time.sleep(2.0)  # beat at work: a few sweeps
    # Beat dies and stays down across the due time. The sweeps it queued before it died would still run (and fire
    # the schedule, on time, which is right); the window starts once they are gone and the last one has finished.
    beat.kill_group()
    from workers.celery import app

    app.control.purge()

    def sweep_idle() -> bool:
        held = SingletonLease.objects.filter(name=SWEEP_LEASE, expires_at__gt=timezone.now()).exclude(holder="")
        return not held.exists()

    # Idle twice, 1.5 s apart: a sweep a worker had already taken from the queue has started by then.
    wait_until(sweep_idle, timeout=30, what="the last sweep to give its lease back")
    time.sleep(1.5)
    wait_until(sweep_idle, timeout=30, what="the last sweep to give its lease back")
    # Bring the armed row close: the next Monday is days away, the test has seconds.
    due = (timezone.now() + timedelta(seconds=2)).replace(microsecond=0) + timedelta(seconds=1)
    ScheduleTimer.objects.filter(trigger=trigger, fired_at__isnull=True).update(fire_at=due)
    wait_until(lambda: timezone.now() >= due + timedelta(seconds=3), timeout=30, what="3 s after the due time")
    fired_while_down = Run.objects.filter(workflow=workflow).count()
    restarted_at = timezone.now()
    fleet.beat(wait=False)
    fleet.beat(wait=False)
    fleet.ready()

    wait_until(
        lambda: Run.objects.filter(workflow=workflow).exists(),
        timeout=60,
        what="the schedule to fire after beat came back",
        detail=lambda: str(list(ScheduleTimer.objects.filter(trigger=trigger).values())),
    )
    run = Run.objects.get(workflow=workflow)
    wait_runs([run.pk], timeout=60)
    time.sleep(3.0)  # a few more sweeps from both beats: nothing more may fire

    runs = Run.objects.filter(workflow=workflow).count()
    started = TriggerFiring.objects.filter(trigger=trigger, outcome="started").count()
    audits = AuditEvent.objects.filter(verb="trigger.started", target_id=str(trigger.pk)).count()
    run.refresh_from_db()
    fired_row = ScheduleTimer.objects.get(trigger=trigger, fire_at=due)
    armed = ScheduleTimer.objects.get(trigger=trigger, fired_at__isnull=True)
    scheduled = run.inputs["scheduled_at"] == due.astimezone(UTC).isoformat().replace("+00:00", "Z")
    fired_after_restart = fired_row.fired_at is not None and fired_row.fired_at >= restarted_at
    ok = (
        fired_while_down == 0
        and runs == 1
        and started == 1
        and audits == 1
        and run.status == "succeeded"
        and scheduled
        and fired_after_restart
        and armed.fire_at > due
    )
    delay = (fired_row.fired_at - restarted_at).total_seconds() if fired_row.fired_at else -1.0
    record_figure(
        f"T1 schedule_across_beat_restart fired {runs}/1 history_started {started} audit_events {audits} "
        f"fired_while_beat_down {fired_while_down} beats_after_restart 2 "
        f"delay_after_restart_s {delay:.1f} "
        f"{'ok' if ok else 'miss'}"
    )
    assert fired_while_down == 0, "the schedule fired while no beat was running"
    assert runs == 1 and started == 1 and audits == 1, (runs, started, audits)
    assert run.status == "succeeded" and scheduled, (run.status, run.inputs)
    assert fired_after_restart and armed.fire_at > due
