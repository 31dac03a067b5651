"""The asynchronous executor model calls run on: one event loop per process, in a thread of its own.

The asynchronous step executor (apps.runs.async_engine) runs every LLM step of a worker process here, as a
coroutine: all of the process's calls share this loop and one pooled HTTP client, so a process holds as
many streams open as it has steps in flight, bounded by the endpoint's in-flight limit, not by CPU cores or
threads. The steps' database work runs on a small pool of threads (`apps.core.database.db_call`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterator

import httpx2

from apps.inference import client

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_loop_pid: int | None = None
_http: httpx2.AsyncClient | None = None


def _start() -> asyncio.AbstractEventLoop:
    global _loop, _loop_pid, _http
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        ready.set()
        loop.run_forever()

    threading.Thread(target=serve, name="inference-loop", daemon=True).start()
    ready.wait()
    _loop, _loop_pid = loop, os.getpid()
    _http = None
    return loop


def event_loop() -> asyncio.AbstractEventLoop:
    """This process's inference loop, started on first use (and again in a forked child)."""
    with _lock:
        if _loop is None or _loop_pid != os.getpid() or not _loop.is_running():
            return _start()
        return _loop


def http_client() -> httpx2.AsyncClient:
    """The pooled HTTP client for model calls; only for use on the inference loop."""
    global _http
    if _http is None:
        # Enough kept-alive connections for every call this process may have in flight.
        _http = client.new_async_http_client(max_connections=256)
    return _http


@contextlib.asynccontextmanager
async def http_session() -> AsyncIterator[httpx2.AsyncClient]:
    """The HTTP client for a model call: the process's pooled one on the inference loop, or, on any other loop
    (a step driven synchronously, with a loop of its own for the call), one opened for the call and closed
    after it. An asynchronous HTTP client belongs to the loop that opened it."""
    if asyncio.get_running_loop() is _loop and _loop_pid == os.getpid():
        yield http_client()
        return
    own = client.new_async_http_client(max_connections=8)
    try:
        yield own
    finally:
        await own.aclose()
