"""Real service processes for integration tests: a Celery worker and the ASGI server, as subprocesses
pointed at the test database, the test Redis and the development inference server.

They are started with the stack's own process toolkit (deploy.devstack) and shaped like the fleet's
(workers/fleet.py), so a test exercises the processes `make run` starts.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from django.db import connection

from deploy.devstack.probes import http_ok
from deploy.devstack.processes import ManagedProcess
from deploy.devstack.services import inference_argv
from workers import fleet

__all__ = [
    "LOG_DIR",
    "REPO",
    "asgi_server_argv",
    "celery_worker_argv",
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


def service_env(**extra: str) -> dict[str, str]:
    """The environment of a child process: the test settings, pointed at the test database."""
    settings_dict = connection.settings_dict
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="aios_web.settings_test",
        AIOS_ENV="test",
        DATABASE_URL=(
            f"postgres://{settings_dict['USER']}:{settings_dict['PASSWORD']}@{settings_dict['HOST']}:"
            f"{settings_dict['PORT']}/{settings_dict['NAME']}"
        ),
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


def inference_server_argv(port: int, *, ttft_ms: int, tpot_ms: int) -> list[str]:
    return inference_argv(port, ttft_ms=ttft_ms, tpot_ms=tpot_ms)


def redis_url_with_db(url: str, db: int) -> str:
    """The same Redis server, another database number: a broker and channel layer of their own."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))
