"""SO1: scale-out across hosts. Workers on two separate hosts (network namespaces, each with its own address)
run a few hundred runs against the main host's PostgreSQL, through PgBouncer in transaction mode, and Redis;
one host loses every process mid-run.

The main host keeps what a deployment keeps on its managed services: PostgreSQL (the test stack's, reached only
through PgBouncer, which listens on the hosts' links), a private Redis that also listens there, Celery beat, and
the side-effect sink (the outside system, counting effects by Idempotency-Key; it sees each caller's address).
Each host runs a Celery worker for the engine queues (engine, default, connectors), so the sweeper and the audit
anchor and checkpoint writers, which beat sends to "default", run on the hosts too, behind PgBouncer.

Expected: both hosts work before the kill; after host 1 is SIGKILLed (every process in its namespace) every run
completes, the survivor doing the rest (its sweeper takes back the dead host's steps, whose leases lapse); no
effect twice; the audit trail verifies and anchors and checkpoints keep being written from the hosts.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection

from apps.audit.models import AuditAnchor
from apps.core.env import database_from_url
from apps.runs.services import run_start
from tests.faults.harness import (
    LEASE_SECONDS,
    BrokerRedirect,
    Fleet,
    RedisServer,
    check_invariants,
    engine_env,
    sized,
    wait_runs,
    wait_until,
)
from tests.faults.workflows import effect_step, publish
from tests.support.figures import record_figure
from tests.support.netns import Host, Hosts
from tests.support.pgbouncer import PgBouncer
from tests.support.sink import Sink
from workers import fleet as fleet_shape

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

HOSTS = 2
N = sized(200, 1000)
KILLED = 0  # the index of the host that dies (reported as host 1, counting from one)


def graph(sink_url: str) -> dict[str, Any]:
    return {
        "steps": [
            {"key": "prepare", "type": "data.transform", "config": {"fields": {"amount": "input.n * 10"}}},
            effect_step(sink_url),
            {"key": "finish", "type": "data.transform", "config": {"fields": {"sent": "steps.send.status"}}},
        ]
    }


def host_env(base: dict[str, str], host: Host, bouncer: PgBouncer, redis: RedisServer) -> dict[str, str]:
    """A host's workers reach every service at the main host's address on their own link."""
    database = str(connection.settings_dict["NAME"])
    app_role = database_from_url("DATABASE_URL", settings.DATABASE_URL)
    redis_url = f"redis://{host.gateway}:{redis.port}/0"
    return {
        **base,
        "DATABASE_URL": bouncer.url_for(app_role, database=database, host=host.gateway),
        "DATABASE_OWNER_URL": bouncer.url_for(connection.settings_dict, database=database, host=host.gateway),
        "AIOS_DATABASE_POOLER": "transaction",
        "REDIS_URL": redis_url,
        "CELERY_BROKER_URL": redis_url,
    }


@pytest.mark.timeout(sized(420, 1800))
def test_so1_workers_on_two_hosts_one_killed_mid_run_every_run_completes_once(analyst, tmp_path: Path):
    with Hosts(HOSTS) as hosts:
        gateways = [host.gateway for host in hosts]
        redis = RedisServer("so1-redis", tmp_path / "redis", also_bind=gateways).start()
        try:
            with (
                BrokerRedirect(redis.url),
                PgBouncer(
                    roles=[database_from_url("DATABASE_URL", settings.DATABASE_URL), connection.settings_dict],
                    listen=["127.0.0.1", *gateways],
                    pool_size=20,
                    name="so1-pgbouncer",
                ) as bouncer,
                Sink(tmp_path / "sink-ledger.sqlite3", host=hosts[0].gateway) as sink,
            ):
                run_scale_out(analyst, hosts, redis, bouncer, sink, tmp_path)
        finally:
            redis.stop()


def run_scale_out(
    analyst: Any, hosts: list[Host], redis: RedisServer, bouncer: PgBouncer, sink: Sink, tmp_path: Path
) -> None:
    checkpoints = tmp_path / "checkpoints"  # one volume that every host mounts, as AIOS_AUDIT_CHECKPOINT_DIR asks
    base = engine_env(
        redis.url,
        # The sink is on the main host's address on host 1's link; host 2 reaches it through its own.
        AIOS_HTTP_ALLOWLIST=f"{hosts[0].gateway}/32",
        # Redis keeps every message here (it is never killed), and a backlog of a few hundred runs on the one
        # survivor sits in the queue for longer than the fault tests' 3 s: re-sending those steps on every sweep
        # would only flood the queue with duplicates that find their step taken.
        AIOS_REQUEUE_AFTER_SECONDS="60",
        AIOS_AUDIT_ANCHOR_SECONDS="1",
        AIOS_AUDIT_CHECKPOINT_SECONDS="2",
        AIOS_AUDIT_CHECKPOINT_DIR=str(checkpoints),
    )
    group = Fleet("so1", base)
    try:
        workflow = publish(analyst, "SO1 scale-out", graph(sink.url))
        engine_queues = ",".join(fleet_shape.ENGINE_QUEUES)
        workers = [
            group.worker(
                concurrency=2,
                queues=engine_queues,
                wait=False,
                prefix=host.argv([]),
                **host_env(base, host, bouncer, redis),
            )
            for host in hosts
        ]
        group.beat(wait=False)
        group.ready(timeout=90)
        anchors_before = AuditAnchor.objects.count()

        # One run in five holds its call open for a second, so some are mid-call when the host dies.
        inputs = [{"n": n, "delay": 1.0} if n % 5 == 0 else {"n": n} for n in range(N)]
        started = time.time()
        ids = [run_start(actor=analyst, workflow=workflow, inputs=data)[0].pk for data in inputs]

        def callers() -> set[str]:
            return {delivery.peer for delivery in sink.deliveries()}

        def both_hosts_working_and_calls_open() -> bool:
            return {host.address for host in hosts} <= callers() and sink.in_flight() >= 1

        wait_until(both_hosts_working_and_calls_open, timeout=90, what="calls from both hosts and one held open")
        dead = hosts[KILLED]
        workers[KILLED].kill_group()
        leftovers = dead.kill_everything()
        killed_at = time.time()
        assert not dead.pids(), f"processes still alive in {dead.namespace} after the kill"

        wait_runs(ids, timeout=sized(180, 900))
        invariants = check_invariants(ids)
        deliveries = sink.deliveries()
        survivor = hosts[1 - KILLED]
        before_kill = {host.address: 0 for host in hosts}
        after_kill = {host.address: 0 for host in hosts}
        for delivery in deliveries:
            side = before_kill if delivery.started_at < killed_at else after_kill
            side[delivery.peer] = side.get(delivery.peer, 0) + 1
        duplicates = sink.duplicate_effects()
        effects = len(sink.ledger())
        anchors = AuditAnchor.objects.count() - anchors_before
        checkpoint_files = sum(path.is_file() for path in checkpoints.rglob("*")) if checkpoints.exists() else 0
        took = time.time() - started
    finally:
        group.close()

    completed = invariants.succeeded
    ok = (
        completed == N
        and duplicates == 0
        and effects == N
        and not invariants.problems
        and all(before_kill[host.address] > 0 for host in hosts)
        and after_kill[survivor.address] > 0
        and after_kill.get(dead.address, 0) == 0
        and anchors > 0
        and checkpoint_files > 0
    )
    print(
        f"SO1 detail: calls before the kill by host {before_kill}, after {after_kill}; leftover processes "
        f"killed {leftovers}; effects {effects}; anchors written {anchors}; checkpoint files {checkpoint_files}; "
        f"lease {LEASE_SECONDS} s; {took:.0f} s in all"
    )
    record_figure(
        f"SO1 hosts {HOSTS} runs {N} completed {completed} duplicate_effects {duplicates} "
        f"killed_host {KILLED + 1} {'ok' if ok else 'miss'}"
    )
    assert not invariants.problems, "\n".join(invariants.problems)
    assert completed == N
    assert duplicates == 0 and effects == N, f"{duplicates} effects applied twice, {effects} keys for {N} runs"
    assert all(before_kill[host.address] > 0 for host in hosts), f"a host did no work before the kill: {before_kill}"
    assert after_kill[survivor.address] > 0, "the surviving host did nothing after the kill"
    assert anchors > 0, "no audit anchor was written by the hosts' workers through PgBouncer"
    assert checkpoint_files > 0, "no audit checkpoint was written by the hosts' workers"
