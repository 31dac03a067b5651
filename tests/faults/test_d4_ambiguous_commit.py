"""D4: ambiguous commits. The workers reach PostgreSQL through a proxy that lets the COMMIT of a step's
result through and then drops the server's answer and the connection: the result is committed, but the
worker sees OperationalError (Temporal's ExecuteAndTimeout case).

Expected: the engine finds the result already committed and goes on (the next step's outbox row committed
with it, so the sweeper relays it); the step is not executed again, no StepResult or audit row is written
twice, and the external effect happens once.
"""

from __future__ import annotations

import pytest

from apps.runs.effects import effect_key
from apps.runs.models import Run, StepRun
from apps.runs.services import run_start
from tests.faults.harness import FAULT_SEED, check_invariants, engine_env, sized, wait_runs
from tests.faults.pgproxy import AmbiguousCommitProxy
from tests.faults.workflows import five_step_graph, publish
from tests.support.figures import record_figure

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

N = sized(20, 200)
P = 0.6


@pytest.mark.timeout(sized(150, 1200))
def test_d4_ambiguous_result_commits_are_never_recorded_or_executed_twice(analyst, fleet, sink, redis_server):
    from django.db import connection

    workflow = publish(analyst, "D4 ambiguous commits", five_step_graph(sink.url))
    settings_dict = connection.settings_dict
    proxy = AmbiguousCommitProxy(
        settings_dict["HOST"] or "127.0.0.1", int(settings_dict["PORT"]), probability=P, seed=FAULT_SEED
    ).start()
    try:
        url = engine_env(redis_server.url)["DATABASE_URL"].replace(f":{settings_dict['PORT']}/", f":{proxy.port}/")
        # Plain text on the wire, whatever the server offers: the proxy reads the protocol.
        proxied = {"DATABASE_URL": url, "PGSSLMODE": "disable", "PGGSSENCMODE": "disable"}
        fleet.worker(concurrency=2, wait=False, **proxied)
        fleet.worker(concurrency=2, wait=False, AIOS_FAULTS_SEED="9", **proxied)
        fleet.beat(wait=False, **proxied)
        fleet.ready()
        ids = [run_start(actor=analyst, workflow=workflow, inputs={"n": n})[0].pk for n in range(N)]
        wait_runs(ids, timeout=sized(120, 1100))
    finally:
        proxy.enabled = False
        fleet.close()
        proxy.close()
    invariants = check_invariants(ids)
    injected = proxy.stats.broken
    executed_again = list(
        StepRun.objects.filter(run_id__in=ids, attempt__gt=1).values_list("run_id", "step_key", "attempt", "restarts")
    )
    ledger = sink.ledger()
    redelivered = [
        key
        for key in (effect_key(run, "send") for run in Run.objects.filter(pk__in=ids))
        if ledger[key].raw_deliveries != 1
    ]
    ok = (
        injected > 0
        and invariants.succeeded == N
        and invariants.duplicate_results == 0
        and not invariants.audit_problems
        and not invariants.problems
        and not executed_again
        and not redelivered
        and sink.duplicate_effects() == 0
    )
    record_figure(
        f"D4 ambiguous_commits_injected {injected} (of {proxy.stats.result_commits_seen} result commits) "
        f"duplicate_step_results {invariants.duplicate_results} audit_problems {len(invariants.audit_problems)} "
        f"steps_executed_again {len(executed_again)} effect_redeliveries {len(redelivered)} "
        f"completed {invariants.succeeded}/{N} {'ok' if ok else 'miss'}"
    )
    assert injected > 0, f"no COMMIT was made ambiguous: {proxy.stats}"
    assert not invariants.problems, "\n".join(invariants.problems)
    assert not executed_again, f"steps executed again after an ambiguous commit: {executed_again}"
    assert not redelivered and sink.duplicate_effects() == 0
