"""The asynchronous executor model calls run on: one event loop per process, in a thread of its own.

Worker threads (Celery's thread pool on the inference queue) do the durable bookkeeping of a step with
Django's ORM; the model call itself is a coroutine submitted here. All calls of a process share this loop
and one pooled HTTP client, so a process holds as many streams open as it has steps in flight, bounded
by the endpoint's in-flight limit, not by CPU cores or threads waiting on sockets.

Tokens arrive on the loop thread; they are handed to the submitting thread through a queue, which drains
it while it waits (`run_streaming`), so the loop never blocks on a database write or a publish.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import queue
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import httpx2

from apps.inference import client

T = TypeVar("T")

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


def run(coroutine: Coroutine[Any, Any, T], *, timeout: float | None = None) -> T:
    """Run `coroutine` on the inference loop and wait for its result from this (non-loop) thread."""
    future = asyncio.run_coroutine_threadsafe(coroutine, event_loop())
    return future.result(timeout)


def run_streaming(
    make: Callable[[Callable[[str], None]], Coroutine[Any, Any, T]],
    on_token: Callable[[str], None],
    *,
    flush_seconds: float = 0.25,
) -> T:
    """Run the coroutine `make(push)` on the loop; every text it `push`es reaches `on_token` on THIS
    thread, in order: the first text as soon as it arrives, later ones every `flush_seconds` (and the
    remainder when the call ends). The waiting thread sleeps in between: with dozens of steps in flight,
    a thread that polled for tokens would cost more CPU than the calls themselves."""
    tokens: queue.SimpleQueue[str] = queue.SimpleQueue()
    started = threading.Event()

    def push(text: str) -> None:  # on the loop thread
        tokens.put(text)
        if not started.is_set():
            started.set()

    future = asyncio.run_coroutine_threadsafe(make(push), event_loop())
    future.add_done_callback(lambda _: started.set())

    def drain() -> None:
        parts = []
        while True:
            try:
                parts.append(tokens.get_nowait())
            except queue.Empty:
                break
        if parts:
            on_token("".join(parts))

    try:
        started.wait()
        while not future.done():
            drain()
            concurrent.futures.wait([future], timeout=flush_seconds)
        drain()
        return future.result()
    finally:
        # The thread leaves early only on an error of its own (on_token raised, the worker is shutting
        # down): the call must not run on without anyone to record it, holding its endpoint slot.
        if not future.done():
            future.cancel()
