"""Liveness, readiness and the worker probe check what they claim: /healthz asks nothing of anyone, /readyz and
`manage.py worker_health` ask the database, Redis and the broker (and the worker's heartbeat), by name."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from rest_framework.test import APIClient

from apps.core.telemetry import health, store
from tests.support.processes import REPO, free_port, service_env


def dead_redis_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


@pytest.mark.django_db
def test_healthz_is_liveness_and_asks_no_dependency(django_assert_num_queries, settings):
    settings.REDIS_URL = settings.CELERY_BROKER_URL = dead_redis_url()
    with django_assert_num_queries(0):
        response = APIClient().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert APIClient().head("/healthz").status_code == 200


@pytest.mark.django_db
def test_readyz_names_every_dependency_with_its_latency():
    response = APIClient().get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert list(body["checks"]) == ["database", "redis", "broker"]
    for name, check in body["checks"].items():
        assert check["ok"] is True, name
        assert 0 <= check["latency_ms"] < 2000, name
    assert response["Cache-Control"] == "no-store"


@pytest.mark.django_db
def test_readyz_is_503_naming_redis_when_redis_is_unreachable(settings):
    settings.REDIS_URL = dead_redis_url()
    started = time.monotonic()
    response = APIClient().get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["redis"]["ok"] is False
    assert body["checks"]["redis"]["error"] == "ConnectionError"
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["broker"]["ok"] is True  # the broker is its own setting, and still up
    assert "127.0.0.1" not in response.content.decode()  # no addresses in a public answer
    assert time.monotonic() - started < 10


@pytest.mark.django_db
def test_readyz_is_503_naming_the_broker_when_the_broker_is_unreachable(settings):
    settings.CELERY_BROKER_URL = dead_redis_url()
    response = APIClient().get("/readyz")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["broker"]["ok"] is False
    assert checks["redis"]["ok"] is True and checks["database"]["ok"] is True


def _worker_health(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "worker_health", *args],
        cwd=REPO,
        env=service_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.django_db(transaction=True)
def test_worker_health_passes_with_a_live_worker_and_fails_without_one(celery_worker_process):
    node = f"test-{os.getpid()}@*"
    deadline = time.monotonic() + 30
    while not store.heartbeats(node) and time.monotonic() < deadline:
        time.sleep(0.2)
    beats = store.heartbeats(node)
    assert beats, "the worker wrote no heartbeat"
    (beat,) = beats.values()
    assert "engine" in beat["queues"] and beat["pid"] > 0

    healthy = _worker_health("--node", node)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert healthy.stdout.splitlines()[0].startswith("heartbeat: ok")
    assert {line.split(":")[0] for line in healthy.stdout.splitlines()} == {"heartbeat", "database", "redis", "broker"}

    missing = _worker_health("--node", "nobody@nowhere")
    assert missing.returncode == 1
    assert "heartbeat: FAILED (no heartbeat)" in missing.stdout

    no_redis = _worker_health("--node", node, REDIS_URL=dead_redis_url())
    assert no_redis.returncode == 1
    assert "redis: FAILED" in no_redis.stdout


def test_a_stale_heartbeat_fails_the_check(db):
    store.heartbeat_write("stale-test@here", interval=60, details={})
    assert health.heartbeat_check("stale-test@here", max_age_seconds=60).ok
    time.sleep(0.05)
    stale = health.heartbeat_check("stale-test@here", max_age_seconds=0.01)
    assert not stale.ok and "older than" in stale.error


def test_readiness_checks_run_once_a_second_however_many_ask(monkeypatch):
    """/readyz needs no sign-in: a burst of requests shares one round of checks instead of opening a connection
    to each dependency per request."""
    calls: list[float] = []

    def counted() -> None:
        calls.append(time.monotonic())

    monkeypatch.setattr(health, "CHECKS", {"counted": counted})
    first = health.readiness()
    assert all(health.readiness() is first for _ in range(20))
    assert len(calls) == 1
    time.sleep(health.READINESS_CACHE_SECONDS + 0.05)
    health.readiness()
    assert len(calls) == 2
