"""A small product for the telemetry tests: the real ASGI server and a real Celery worker process, on a broker of
their own (another Redis database, so the session's worker never takes their steps), with extra environment
(log format, OTLP endpoint). Runs are started through the web server's API, as a client would."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

from tests.support.processes import (
    asgi_server_argv,
    celery_worker_argv,
    free_port,
    http_ok,
    redis_url_with_db,
    running,
    service_env,
)


@dataclass
class Stack:
    base: str
    web_log: Path
    worker_log: Path

    def request(
        self, method: str, path: str, *, token: str = "", body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        """(HTTP status, parsed JSON body or None)."""
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        if token:
            all_headers["Authorization"] = f"Token {token}"
        request = urllib.request.Request(
            self.base + path,
            data=json.dumps(body).encode() if body is not None else None,
            method=method,
            headers=all_headers,
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                raw = response.read()
                status = response.status
        except urllib.error.HTTPError as error:
            raw, status = error.read(), error.code
        try:
            return status, json.loads(raw or b"null")
        except ValueError:
            return status, None


@contextmanager
def telemetry_stack(name: str, *, redis_db: int, **extra_env: str) -> Iterator[Stack]:
    """Web and worker named `name`, their broker on Redis database `redis_db`, with `extra_env` set in both."""
    import redis

    broker = redis_url_with_db(settings.REDIS_URL, redis_db)
    redis.Redis.from_url(broker).flushdb()  # no stale tasks from an earlier session
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = service_env(
        CELERY_BROKER_URL=broker,
        DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
        AIOS_PUBLIC_URLS=base,
        **extra_env,
    )
    with ExitStack() as stack:
        worker_log = stack.enter_context(
            running(
                f"{name}-worker", celery_worker_argv(node=f"{name}-worker"), ready=lambda log: " ready." in log, env=env
            )
        )
        web_log = stack.enter_context(
            running(f"{name}-asgi", asgi_server_argv(port), ready=lambda log: http_ok(f"{base}/healthz"), env=env)
        )
        yield Stack(base=base, web_log=web_log, worker_log=worker_log)


def wait_for(condition: Any, *, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
