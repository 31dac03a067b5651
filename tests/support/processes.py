"""Real service processes for integration tests: a Celery worker and the ASGI server, as subprocesses
pointed at the test database, the test Redis and the development inference server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from django.db import connection

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
    SIGKILL) and its children."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"{name}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + timeout
        while not ready(log_path.read_text(errors="replace")):
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready after {timeout} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        yield log_path
    finally:
        stop_process_group(process)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_process_group(process: subprocess.Popen[bytes], grace: float = 10) -> None:
    """SIGTERM the process group, SIGKILL what is left after `grace`, and wait until the whole group is
    gone (pool children hold database connections that would block dropping the test database)."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while _group_alive(process.pid) and time.monotonic() < deadline:
        process.poll()
        time.sleep(0.05)
    if _group_alive(process.pid):
        os.killpg(process.pid, signal.SIGKILL)
        while _group_alive(process.pid):
            process.poll()
            time.sleep(0.05)
    process.wait(5)


def celery_worker_argv(queues: str = "engine,inference,connectors,default", concurrency: int = 2) -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery",
        "worker",
        "-Q",
        queues,
        "-c",
        str(concurrency),
        "-n",
        f"test-{os.getpid()}@%h",
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def asgi_server_argv(port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "aios_web.asgi:application",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--lifespan",
        "off",
        "--log-level",
        "warning",
    ]


def inference_server_argv(port: int, *, ttft_ms: int, tpot_ms: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "devserver",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--script",
        str(REPO / "devserver" / "demo_script.json"),
        "--ttft-ms",
        str(ttft_ms),
        "--tpot-ms",
        str(tpot_ms),
    ]


def redis_url_with_db(url: str, db: int) -> str:
    """The same Redis server, another database number: a broker and channel layer of their own."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))
