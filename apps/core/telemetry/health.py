"""Readiness checks of web and worker processes, and the worker's heartbeat.

Liveness (`/healthz`) asks nothing of anyone: a process that answers is alive, and restarting it because the
database is away would not bring the database back. Readiness (`/readyz`, `manage.py worker_health`) checks what
the process needs to do its work, each dependency by name with its latency: the database, Redis (cache, channel
layer, in-flight limits) and the Celery broker (which may be another server). A worker is also checked for a
recent heartbeat, which its main process writes while it consumes from the broker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import connection

from apps.core.telemetry import store

logger = logging.getLogger(__name__)

CHECK_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class CheckResult:
    """One dependency's answer: its name, whether it answered, how long it took, and why not (the error's
    kind only: the readiness answer is public, and an error message may name internal hosts)."""

    name: str
    ok: bool
    latency_ms: float
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {"ok": self.ok, "latency_ms": round(self.latency_ms, 2)}
        if self.error:
            result["error"] = self.error
        return result


def _timed(name: str, probe: Callable[[], None]) -> CheckResult:
    started = time.perf_counter()
    try:
        probe()
    except Exception as error:
        # The full message (with addresses) goes to the log only.
        logger.warning("readiness check %s failed: %s", name, error)
        return CheckResult(name, False, (time.perf_counter() - started) * 1000, type(error).__name__)
    return CheckResult(name, True, (time.perf_counter() - started) * 1000)


def _database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _redis() -> None:
    # A client of its own (not the shared telemetry one): the check must see the server as a new
    # connection would, and must use REDIS_URL as it is now.
    import redis

    client = redis.Redis.from_url(
        settings.REDIS_URL, socket_timeout=CHECK_TIMEOUT_SECONDS, socket_connect_timeout=CHECK_TIMEOUT_SECONDS
    )
    try:
        client.ping()
    finally:
        client.close()


def _broker() -> None:
    from kombu import Connection

    with Connection(
        settings.CELERY_BROKER_URL,
        connect_timeout=CHECK_TIMEOUT_SECONDS,
        transport_options={
            "socket_timeout": CHECK_TIMEOUT_SECONDS,
            "socket_connect_timeout": CHECK_TIMEOUT_SECONDS,
        },
    ) as broker:
        broker.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=CHECK_TIMEOUT_SECONDS)
        broker.default_channel  # noqa: B018 - opening a channel is what proves the broker answers


# Name → probe, in the order they are reported.
CHECKS: dict[str, Callable[[], None]] = {"database": _database, "redis": _redis, "broker": _broker}


# `/readyz` answers without sign-in, and each check opens connections with multi-second timeouts: a flood of
# requests would open a flood of connections to the database, Redis and the broker. One process answers from
# its last result for this long (probes come every few seconds; a second of staleness changes nothing). Keyed
# by the addresses checked, so a process whose settings change (tests) never sees another setup's answer.
READINESS_CACHE_SECONDS = 1.0
_readiness_lock = threading.Lock()
_readiness_cache: dict[tuple[str, ...], tuple[float, list[CheckResult]]] = {}


def readiness() -> list[CheckResult]:
    """Every dependency's check, in order; the process is ready when all are ok. Concurrent callers share one
    round of checks per READINESS_CACHE_SECONDS."""
    key: tuple[str, ...] = (
        str(settings.DATABASES["default"].get("HOST")),
        settings.REDIS_URL,
        settings.CELERY_BROKER_URL,
    )
    key += tuple(f"{name}:{id(probe)}" for name, probe in CHECKS.items())
    with _readiness_lock:
        cached = _readiness_cache.get(key)
        if cached is not None and time.monotonic() - cached[0] < READINESS_CACHE_SECONDS:
            return cached[1]
        results = [_timed(name, probe) for name, probe in CHECKS.items()]
        _readiness_cache.clear()
        _readiness_cache[key] = (time.monotonic(), results)
        return results


def heartbeat_check(node_pattern: str, *, max_age_seconds: float) -> CheckResult:
    """Whether a worker matching `node_pattern` (a Celery node name or glob) wrote a heartbeat recently."""
    started = time.perf_counter()
    try:
        beats = store.heartbeats(node_pattern)
    except Exception as error:
        return CheckResult("heartbeat", False, (time.perf_counter() - started) * 1000, type(error).__name__)
    latency = (time.perf_counter() - started) * 1000
    now = time.time()
    fresh = [beat for beat in beats.values() if now - float(beat.get("at", 0)) <= max_age_seconds]
    if not fresh:
        reason = "no heartbeat" if not beats else f"last heartbeat older than {max_age_seconds:g} s"
        return CheckResult("heartbeat", False, latency, reason)
    return CheckResult("heartbeat", True, latency)


class Heartbeat:
    """A worker's heartbeat: a daemon thread of its main process that writes `store.heartbeat_write` every
    `interval` seconds from the moment the worker consumes from the broker until it stops."""

    def __init__(self, node: str, *, interval: float, details: dict[str, Any]) -> None:
        self.node, self.interval, self.details = node, interval, details
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="aios-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        try:
            store.telemetry_redis().delete(store.heartbeat_key(self.node))
        except Exception:
            logger.info("could not remove the heartbeat of %s; it expires by itself", self.node)

    def _beat(self) -> None:
        while not self._stop.is_set():
            try:
                store.heartbeat_write(self.node, interval=self.interval, details=self.details)
            except Exception:
                logger.warning("could not write the heartbeat of %s", self.node, exc_info=True)
            self._stop.wait(self.interval)
