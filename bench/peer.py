"""The peer side of B1/B2/B3: bare Celery tasks doing what a step costs without the engine.

A B1/B2 peer step does the same durable work the reference anchors describe: an INSERT ... RETURNING and an
UPDATE (each its own autocommit transaction, so two synchronous commits) and one progress publish on the
product's channel layer (RedisPubSubChannelLayer). Steps are chained with `celery.chain`, so the next task is
published by the worker when the previous one finishes: one broker hop per step, like the engine.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import redis
from asgiref.sync import async_to_sync
from celery import chain
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection

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
        layer = get_channel_layer()
        assert layer is not None
        async_to_sync(layer.group_send)(
            f"peer.{chain_id}", {"type": "run.changed", "run_id": chain_id, "step_keys": [f"s{position}"]}
        )


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
