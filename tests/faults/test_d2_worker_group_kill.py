"""D2: the whole worker group (master and pool children) SIGKILLed mid-step; a replacement starts at once.

Expected: the sweeper takes each interrupted step back once its lease expires, within lease + sweep
interval + 5 s of the kill (the recovery time: from the kill to the step's `step.lease_expired` event,
when it is queued again); steps the dead worker had reserved but not started are re-sent by the sweeper
(their broker messages sit unacknowledged until the visibility timeout); retry timers that were pending
during the outage are rows in the database and fire afterwards (0 lost). The runs leave a backlog in the
queues, as a real outage does: the sweeper must keep running behind it. The time to the step's next claim
is reported too; it also holds queueing behind that backlog.
"""

from __future__ import annotations

import json
import time

import pytest
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.runs.models import StepRun, Timer
from apps.runs.services import run_start
from tests.faults.harness import (
    LEASE_SECONDS,
    SWEEP_SECONDS,
    check_invariants,
    percentile,
    sized,
    timeline,
    wait_runs,
    wait_until,
)
from tests.faults.workflows import effect_step, publish
from tests.support.figures import record_figure

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

N = sized(40, 120)
TARGET = LEASE_SECONDS + SWEEP_SECONDS + 5


def graph(sink_url: str) -> dict:
    retry = {"max_attempts": 3, "backoff_seconds": 4, "jitter": 0}
    return {
        "steps": [
            {"key": "prepare", "type": "data.transform", "config": {"fields": {"amount": "input.n * 10"}}},
            effect_step(sink_url, retry=retry),
            {"key": "finish", "type": "data.transform", "config": {"fields": {"sent": "steps.send.status"}}},
        ]
    }


@pytest.mark.timeout(sized(150, 900))
def test_d2_whole_worker_group_killed_mid_step_recovers_within_lease_plus_sweep(analyst, fleet, sink):
    workflow = publish(analyst, "D2 group kill", graph(sink.url))
    old = fleet.worker(concurrency=4, wait=False)
    fleet.beat(wait=False)
    fleet.ready()

    # A quarter of the runs fail their first call (HTTP 503, retryable): a retry timer is pending when the
    # worker dies. The others hold the call open for 2 s, so several are mid-call at the kill.
    inputs = [{"n": n, "fail_first": 1} if n % 4 == 0 else {"n": n, "delay": 2.0} for n in range(N)]
    ids = [run_start(actor=analyst, workflow=workflow, inputs=data)[0].pk for data in inputs]
    retrying = [pk for pk, data in zip(ids, inputs, strict=True) if data.get("fail_first")]

    def mid_step_with_timers() -> bool:
        running = StepRun.objects.filter(run_id__in=ids, step_key="send", state="running").count()
        timers = Timer.objects.filter(run_id__in=retrying, kind="retry", fired_at__isnull=True).count()
        return sink.in_flight() >= 2 and running >= 2 and timers >= 1

    wait_until(mid_step_with_timers, timeout=60, what="steps mid-call and a pending retry timer")
    old.kill_group()
    killed_at = timezone.now()
    interrupted = list(
        StepRun.objects.filter(run_id__in=ids, state="running").values_list("pk", "run_id", "step_key", "attempt")
    )
    pending_timers = Timer.objects.filter(run_id__in=ids, kind="retry", fired_at__isnull=True).count()
    replacement_started = time.monotonic()
    fleet.worker(concurrency=4)
    replacement_ready_s = time.monotonic() - replacement_started

    wait_runs(ids, timeout=sized(120, 800))
    invariants = check_invariants(ids)
    steps = {s.pk: s for s in StepRun.objects.filter(pk__in=[row[0] for row in interrupted])}
    taken_back: dict[tuple[str, str], float] = {}
    for target_id, data, at in AuditEvent.objects.filter(
        verb="step.lease_expired", target_type="runs.run", created_at__gt=killed_at
    ).values_list("target_id", "data", "created_at"):
        key = (target_id, json.loads(data)["step"])
        taken_back.setdefault(key, (at - killed_at).total_seconds())
    recoveries = [taken_back.get((str(run_id), key), float("inf")) for _, run_id, key, _ in interrupted]
    # The next claim, on the mid-call runs only: a retrying run's last claim also holds its backoff.
    timed = [row for row in interrupted if row[1] not in retrying]
    reclaims = [(steps[pk].started_at - killed_at).total_seconds() for pk, *_ in timed]
    not_reclaimed = [f"run {run_id} {key}" for pk, run_id, key, attempt in interrupted if steps[pk].attempt <= attempt]
    retried = StepRun.objects.filter(run_id__in=retrying, step_key="send", state="succeeded", attempt__gte=2).count()
    lost_timers = len(retrying) - retried
    duplicates = sink.duplicate_effects()
    p50, p95, worst = (percentile(recoveries, q) for q in (0.5, 0.95, 1.0))
    ok = (
        invariants.succeeded == N
        and worst <= TARGET
        and lost_timers == 0
        and duplicates == 0
        and not invariants.problems
        and not not_reclaimed
    )
    record_figure(
        f"D2 completed {invariants.succeeded}/{N} interrupted_steps {len(interrupted)} "
        f"recovery_p50_s {p50:.1f} recovery_p95_s {p95:.1f} recovery_max_s {worst:.1f} "
        f"target_max_s {TARGET:.0f} (lease {LEASE_SECONDS} + sweep {SWEEP_SECONDS:g} + 5) "
        f"next_claim_max_s {percentile(reclaims, 1.0):.1f} "
        f"lost_retry_timers {lost_timers} (of {pending_timers} pending at the kill) duplicate_effects {duplicates} "
        f"replacement_ready_s {replacement_ready_s:.1f} {'ok' if ok else 'miss'}"
    )
    assert interrupted, "no step was running when the worker group died: the test exercised nothing"
    assert not invariants.problems, "\n".join(invariants.problems)
    assert not not_reclaimed, f"interrupted steps never re-claimed: {not_reclaimed}"
    # Recovery time is a figure (ok/miss above), not an assertion: timings on a shared 2-core machine are
    # reported, never used to fail the suite. Slow recoveries are printed to explain a miss.
    slow = [run_id for (pk, run_id, *_), took in zip(interrupted, recoveries, strict=True) if took > TARGET]
    for run_id in slow:
        print(timeline(run_id, killed_at))
    assert all(took != float("inf") for took in recoveries), f"steps never taken back: {sorted(recoveries)}"
    assert lost_timers == 0, f"{lost_timers} retrying steps never retried"
    assert duplicates == 0
