"""Fixtures of the fault tests: a private Redis, the side-effect sink, and a fleet of real workers and beat.

Each of them depends on `transactional_db`, so pytest stops the processes before the test database is
flushed (a worker still connected would block the flush).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.harness import (
    LEASE_SECONDS,
    RELAY_AFTER_SECONDS,
    REQUEUE_AFTER_SECONDS,
    RESTART_CAP,
    SWEEP_SECONDS,
    BrokerRedirect,
    Fleet,
    RedisServer,
    engine_env,
)
from tests.faults.private_pg import PrivatePostgres
from tests.support.figures import FIGURES, record_figure
from tests.support.sink import Sink


@pytest.fixture(autouse=True)
def figure_or_miss(request: pytest.FixtureRequest) -> Iterator[None]:
    """A fault test that fails before it measured anything still leaves its line in reports/figures.txt,
    as a miss, so the figures never silently lack a test."""
    found = re.match(r"test_((?:[dc]|so)\d+)_", request.node.module.__name__.rsplit(".", 1)[-1])
    before = FIGURES.read_text().splitlines() if FIGURES.exists() else []
    yield
    if found is None:
        return
    name = found.group(1).upper()
    after = FIGURES.read_text().splitlines() if FIGURES.exists() else []
    if not any(line.startswith(f"{name} ") for line in after[len(before) :]):
        record_figure(f"{name} not_measured (the test failed before measuring: see its output) miss")


@pytest.fixture(autouse=True)
def engine_settings(settings: Any) -> None:
    """The test process uses the same engine timings as the workers (it claims and sweeps in some tests)."""
    settings.AIOS_STEP_LEASE_SECONDS = LEASE_SECONDS
    settings.AIOS_SWEEP_INTERVAL_SECONDS = SWEEP_SECONDS
    settings.AIOS_OUTBOX_RELAY_AFTER_SECONDS = RELAY_AFTER_SECONDS
    settings.AIOS_REQUEUE_AFTER_SECONDS = REQUEUE_AFTER_SECONDS
    settings.AIOS_STEP_RESTART_CAP = RESTART_CAP
    settings.AIOS_HTTP_ALLOWLIST = ["127.0.0.1/32"]


@pytest.fixture
def redis_server(transactional_db: Any, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    """A private memory-only redis-server; the test process's Celery producer sends to it too."""
    server = RedisServer(f"{request.node.name}-redis", tmp_path / "redis").start()
    try:
        with BrokerRedirect(server.url):
            yield server
    finally:
        server.stop()


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[Sink]:
    with Sink(tmp_path / "sink-ledger.sqlite3") as running:
        yield running


@pytest.fixture
def fleet(transactional_db: Any, redis_server: RedisServer, request: pytest.FixtureRequest) -> Iterator[Fleet]:
    """Workers and beat on the private Redis and the test database (start them with fleet.worker() and
    fleet.beat()); all stopped at the end of the test."""
    name = request.node.name.replace("test_", "", 1)[:40]
    group = Fleet(name, engine_env(redis_server.url))
    try:
        yield group
    finally:
        group.close()


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    """A PostgreSQL cluster of the test's own, which it may restart or crash (the shared one must not)."""
    cluster = PrivatePostgres().start()
    try:
        yield cluster
    finally:
        cluster.close()
