"""Real service processes for integration tests: a Celery worker and the ASGI server, as subprocesses
pointed at the test database, the test Redis and the development inference server.

They are started with the stack's own process toolkit (deploy.devstack) and shaped like the fleet's
(workers/fleet.py), so a test exercises the processes `make run` starts.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from django.conf import settings
from django.db import connection

from apps.core.env import database_from_url
from deploy.devstack.probes import http_ok
from deploy.devstack.processes import ManagedProcess
from deploy.devstack.services import inference_argv
from workers import fleet

__all__ = [
    "LOG_DIR",
    "REPO",
    "asgi_server_argv",
    "celery_worker_argv",
    "database_url_as",
    "free_port",
    "http_ok",
    "inference_server_argv",
    "redis_url_with_db",
    "running",
    "service_env",
]

REPO = Path(__file__).resolve().parents[2]
LOG_DIR = REPO / "reports" / "logs"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def database_url_as(role: Mapping[str, Any]) -> str:
    """The test database's URL, connecting as `role` (a DATABASES entry: its USER, PASSWORD, HOST and PORT)."""
    name = connection.settings_dict["NAME"]
    # Percent-escaped: a generated password may hold any character (the settings decode it, dj-database-url).
    user, password = quote(str(role["USER"]), safe=""), quote(str(role["PASSWORD"]), safe="")
    return f"postgres://{user}:{password}@{role['HOST']}:{role['PORT']}/{name}"


def service_env(**extra: str) -> dict[str, str]:
    """The environment of a child process: the test settings, pointed at the test database.

    pytest is the owner of the test database; the processes it starts connect as the application role, as
    web, workers and beat do in production, with the owner's URL beside it for a `migrate` they run.
    """
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="aios_web.settings_test",
        AIOS_ENV="test",
        AIOS_DATABASE_ROLE="application",
        DATABASE_URL=database_url_as(database_from_url("DATABASE_URL", settings.DATABASE_URL)),
        DATABASE_OWNER_URL=database_url_as(connection.settings_dict),
        PYTHONUNBUFFERED="1",
        DJANGO_CONN_MAX_AGE="0",
    )
    env.update(extra)
    return env


@contextmanager
def running(
    name: str, argv: list[str], *, ready: Callable[[str], bool], env: dict[str, str], timeout: float = 60
) -> Iterator[Path]:
    """Start `argv`, wait until `ready(log_text)` is true, yield the log path, then stop it (SIGTERM, then
    SIGKILL) and whatever is left of its process group: pool children hold database connections that would
    block dropping the test database."""
    process = ManagedProcess(name, argv, env=env, cwd=REPO, log_path=LOG_DIR / f"{name}.log")
    process.start()
    try:
        process.wait_until(ready, timeout)
        yield process.log_path
    finally:
        process.stop(timeout=10)


def celery_worker_argv(
    queues: str = ",".join(fleet.ALL_QUEUES), concurrency: int = 2, node: str | None = None
) -> list[str]:
    """One worker of the fleet's kind on `queues`. Gossip, mingle and heartbeats are off: a test's workers
    start and stop often, and need no word from each other."""
    worker = fleet.Worker(
        "test-worker", node or f"test-{os.getpid()}", tuple(queues.split(",")), concurrency=concurrency
    )
    return worker.argv(extra=("--without-gossip", "--without-mingle", "--without-heartbeat"))


def asgi_server_argv(port: int) -> list[str]:
    return fleet.web_argv(port, log_level="warning")


def inference_server_argv(
    port: int, *, ttft_ms: int, tpot_ms: int, script: Path | None = None, extra_args: Sequence[str] = ()
) -> list[str]:
    """The development inference server's command line: the demo script unless `script` names another
    (`tests.support.devserver.write_script` writes one), then `extra_args` (`--tool-call-style openai`)."""
    argv = inference_argv(port, ttft_ms=ttft_ms, tpot_ms=tpot_ms, **({"script": script} if script else {}))
    return [*argv, *extra_args]


def redis_url_with_db(url: str, db: int) -> str:
    """The same Redis server, another database number: a broker and channel layer of their own."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))
