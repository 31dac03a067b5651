"""The peer side of B1/B2/B3: bare Celery tasks doing what a step costs without the engine.

A B1/B2 peer step does the same durable work the reference anchors describe: an INSERT ... RETURNING and an
UPDATE (each its own autocommit transaction, so two synchronous commits) and one progress publish through the
product's own publish path (`publish_run_changed`: one PUBLISH on a persistent client, the message the
channel layer delivers to viewers). Steps are chained with `celery.chain`, so the next task is published by
the worker when the previous one finishes: one broker hop per step, like the engine without eager dispatch.

B3's fair durable peer (`peer_run_start`, behind `bench/urls.py`) takes the same token-authenticated POST as
the product's trigger API, writes one row, and sends a chain of three such steps.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import redis
from celery import chain
from django.conf import settings
from django.db import connection
from rest_framework import status
from rest_framework.decorators import api_view
from rest_framework.request import Request
from rest_framework.response import Response

from apps.runs.api.serializers import RunStartSerializer
from apps.runs.events import publish_run_changed
from bench.steps import fibonacci
from workers.celery import app

PEER_TABLE_SQL = """
CREATE TABLE IF NOT EXISTS bench_peer_step (
    id bigserial PRIMARY KEY,
    chain_id bigint NOT NULL,
    position integer NOT NULL,
    state text NOT NULL,
    output jsonb,
    started_at timestamptz NOT NULL,
    finished_at timestamptz
);
CREATE INDEX IF NOT EXISTS bench_peer_step_chain ON bench_peer_step (chain_id, position);
"""
DRAIN_COUNTER = "bench:drain:done"
DRAIN_QUEUE = "bench_drain"

_redis: redis.Redis | None = None


@app.task(name="bench.peer_step")
def peer_step(
    chain_id: int, position: int, last: int, cpu_n: int = 0, writes: bool = True, publish: bool = True
) -> None:
    """One peer step: optional CPU work, two autocommit writes, one progress event.

    `writes` and `publish` turned off give B1's breakdown rows; without writes only the last step records
    its finish (one INSERT), so the client still sees the chain end.
    """
    output = {"value": fibonacci(cpu_n)} if cpu_n else {"n": 1}
    with connection.cursor() as cursor:
        if writes:
            cursor.execute(
                "INSERT INTO bench_peer_step (chain_id, position, state, started_at) VALUES (%s, %s, 'running', %s) "
                "RETURNING id",
                [chain_id, position, datetime.now(UTC)],
            )
            row_id = cursor.fetchone()[0]
            cursor.execute(
                "UPDATE bench_peer_step SET state = 'succeeded', output = %s, finished_at = %s WHERE id = %s",
                [json.dumps(output), datetime.now(UTC), row_id],
            )
        elif position == last:
            now = datetime.now(UTC)
            cursor.execute(
                "INSERT INTO bench_peer_step (chain_id, position, state, started_at, finished_at) "
                "VALUES (%s, %s, 'succeeded', %s, %s)",
                [chain_id, position, now, now],
            )
    if publish:
        # The product's publish path; the group is run.<chain id>, which no viewer of a real run joins
        # (chain ids are far above any run id of the bench database).
        publish_run_changed(chain_id, [f"s{position}"])


def peer_chain_start(chain_id: int, steps: int, cpu_n: int = 0, *, writes: bool = True, publish: bool = True) -> float:
    """Send the chain; returns the wall-clock time just before sending (the peer's "run started")."""
    signatures = [
        peer_step.si(chain_id, i, steps - 1, cpu_n, writes, publish).set(queue="engine") for i in range(steps)
    ]
    started = time.time()
    chain(*signatures).apply_async()
    return started


@app.task(name="bench.noop")
def noop(total: int) -> None:
    """B3 peer: a no-op whose only extra work is counting itself, so the client can see the drain end."""
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(settings.REDIS_URL)
    if _redis.incr(DRAIN_COUNTER) == total:
        _redis.set(f"{DRAIN_COUNTER}:at", repr(time.time()))


PEER_RUN_TABLE_SQL = """
CREATE TABLE IF NOT EXISTS bench_peer_run (
    id bigserial PRIMARY KEY,
    inputs jsonb NOT NULL,
    created_at timestamptz NOT NULL
);
"""
# Peer runs' chains are numbered from here, so they never meet B1's chains in bench_peer_step.
PEER_RUN_CHAIN_BASE = 10**12
PEER_RUN_STEPS = 3


@api_view(["POST"])
def peer_run_start(request: Request, slug: str) -> Response:
    """B3's fair durable peer of POST /api/workflows/<slug>/runs/: the same authentication, permission
    classes and body parsing, one durable row, then a chain of three peer steps sent to the broker."""
    body = RunStartSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO bench_peer_run (inputs, created_at) VALUES (%s, %s) RETURNING id",
            [json.dumps(body.validated_data["inputs"]), datetime.now(UTC)],
        )
        run_id = cursor.fetchone()[0]
    peer_chain_start(PEER_RUN_CHAIN_BASE + run_id, PEER_RUN_STEPS)
    return Response({"id": run_id, "workflow": slug}, status=status.HTTP_201_CREATED)
