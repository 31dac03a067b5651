"""D6(b): Redis, misconfigured without persistence, SIGKILLed while steps are queued and in flight, then
restarted empty: every queued message is gone (M5), and the Postgres side must repair it.

Expected: the sweeper re-sends every step that stayed queued longer than AIOS_REQUEUE_AFTER_SECONDS, the
leases of steps whose worker lost its broker connection expire and are taken back, outbox rows that
could not be sent while Redis was down are relayed, and every run completes with no effect applied twice.

A Celery worker sometimes dies of the broker's loss itself ("Unrecoverable error: AttributeError ...
'hostname'" while kombu restores unacknowledged messages on a connection that is already gone; compare
celery#9250). Deployments run workers under a supervisor that restarts them, and so does this test; the
figure counts those crashes (`worker_crashes`), since each is a gap in capacity while Redis flaps.
"""

from __future__ import annotations

import time

import pytest
from django.utils import timezone

from apps.runs.models import StepResult, StepRun
from apps.runs.services import run_start
from tests.faults.harness import REQUEUE_AFTER_SECONDS, check_invariants, sized, wait_runs, wait_until
from tests.faults.workflows import five_step_graph, publish
from tests.support.figures import record_figure

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

N = sized(24, 240)
DOWN_SECONDS = 2.0


@pytest.mark.timeout(sized(150, 1200))
def test_d6_every_run_completes_after_redis_loses_its_queue(analyst, fleet, sink, redis_server):
    workflow = publish(analyst, "D6 redis lost", five_step_graph(sink.url))
    fleet.worker(concurrency=2, wait=False)
    fleet.beat(wait=False)
    fleet.ready()
    supervisor = fleet.supervise()
    # Each call holds 0.3 s, so two pool children leave a backlog of queued messages in Redis.
    ids = [run_start(actor=analyst, workflow=workflow, inputs={"n": n, "delay": 0.3})[0].pk for n in range(N)]

    def backlog() -> int:
        broker = redis_server.client()  # a new connection: the server may have been restarted
        return sum(int(broker.llen(queue)) for queue in ("engine", "connectors"))

    wait_until(
        lambda: backlog() >= 8 and sink.in_flight() >= 1,
        timeout=60,
        what="a backlog of queued step messages in Redis with a call in flight",
        detail=lambda: f"backlog {backlog()}, in flight {sink.in_flight()}",
        poll=0.02,
    )
    lost_messages = backlog()
    queued_at_kill = StepRun.objects.filter(run_id__in=ids, state="queued").count()
    running_at_kill = StepRun.objects.filter(run_id__in=ids, state="running").count()
    redis_server.kill()
    time.sleep(DOWN_SECONDS)
    redis_server.start()  # memory only: it comes back empty, every queued message is gone
    restarted_at = timezone.now()
    backlog_after = backlog()

    def consumed_since_restart() -> bool:
        return StepResult.objects.filter(run_id__in=ids, created_at__gt=restarted_at).exists()

    resume_s = wait_until(
        consumed_since_restart, timeout=60, what="any step to complete after Redis came back", poll=0.05
    )
    wait_runs(ids, timeout=sized(120, 1000))
    supervisor.stop()
    invariants = check_invariants(ids)
    duplicates = sink.duplicate_effects()
    ok = invariants.succeeded == N and duplicates == 0 and not invariants.problems
    record_figure(
        f"D6 completed {invariants.succeeded}/{N} lost {N - invariants.succeeded} variant no_persistence "
        f"messages_lost_in_redis {lost_messages} backlog_after_restart {backlog_after} "
        f"queued_at_kill {queued_at_kill} running_at_kill {running_at_kill} "
        f"time_to_resume_s {resume_s:.1f} (requeue after {REQUEUE_AFTER_SECONDS:g} s) "
        f"duplicate_effects {duplicates} worker_crashes {len(supervisor.crashes)} {'ok' if ok else 'miss'}"
    )
    for crash in supervisor.crashes:
        print(f"worker crashed (restarted): {crash}")
    assert not invariants.problems, "\n".join(invariants.problems)
    assert duplicates == 0
