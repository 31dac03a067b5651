"""The few operational facts kept in Redis rather than PostgreSQL: what the sweeper last did, counters no table
holds (lease takeovers, model-call errors by kind), and each worker's heartbeat.

Redis because these are written every few seconds by any process and read at every scrape; a table would take
a write per sweep for figures nobody needs after a restart. They are counters and "last seen" values: after a
Redis flush, counters start again from zero (Prometheus treats that as a counter reset) and a heartbeat is back
within one interval. A failed write is logged and never fails the work it describes.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any, cast

import redis
from django.conf import settings
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

SWEEPER_KEY = "aios:telemetry:sweeper"
INFERENCE_ERRORS_KEY = "aios:telemetry:inference-errors"
HEARTBEAT_PREFIX = "aios:telemetry:worker-heartbeat:"
# Separates endpoint and kind in the error counters' field names (neither can contain a tab).
FIELD_SEPARATOR = "\t"

_clients: dict[str, redis.Redis] = {}
_clients_lock = threading.Lock()


def telemetry_redis(url: str | None = None) -> redis.Redis:
    """A Redis client for telemetry (short timeouts: a scrape or a sweep must not hang on it), one per URL."""
    url = url or settings.REDIS_URL
    with _clients_lock:
        client = _clients.get(url)
        if client is None:
            client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2, decode_responses=True)
            _clients[url] = client
        return client


def sweep_record(*, started: float, finished: float, lease_takeovers: int, incidents: int) -> None:
    """After each sweep: when it ran and how long it took, and how many leases it took back (a counter)."""
    try:
        pipe = telemetry_redis().pipeline(transaction=False)
        pipe.hset(
            SWEEPER_KEY,
            mapping={
                "last_started": f"{started:.6f}",
                "last_finished": f"{finished:.6f}",
                "last_duration": f"{finished - started:.6f}",
            },
        )
        pipe.hincrby(SWEEPER_KEY, "sweeps", 1)
        if lease_takeovers:
            pipe.hincrby(SWEEPER_KEY, "lease_takeovers", lease_takeovers)
        if incidents:
            pipe.hincrby(SWEEPER_KEY, "incidents_opened", incidents)
        pipe.execute()
    except RedisError:
        logger.warning("could not record the sweep's figures in Redis", exc_info=True)


def heartbeat_key(node: str) -> str:
    return f"{HEARTBEAT_PREFIX}{node}"


def heartbeat_write(node: str, *, interval: float, details: Mapping[str, Any]) -> None:
    """A worker's sign of life: its node name, when, and what it serves; expires after three intervals."""
    payload = json.dumps({"node": node, "at": time.time(), "host": socket.gethostname(), **details})
    telemetry_redis().set(heartbeat_key(node), payload, ex=max(int(interval * 3), 3))


def heartbeats(pattern_node: str = "*") -> dict[str, dict[str, Any]]:
    """The heartbeats present, by node name (`pattern_node` may be a glob, e.g. "*@host")."""
    client = telemetry_redis()
    found: dict[str, dict[str, Any]] = {}
    for key in client.scan_iter(match=heartbeat_key(pattern_node), count=100):
        raw = cast(str | None, client.get(key))
        if raw:
            data = json.loads(raw)
            found[str(data.get("node") or key.removeprefix(HEARTBEAT_PREFIX))] = data
    return found
