"""A worker's database connection across long waits, and database work from coroutines."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from contextvars import ContextVar, copy_context
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.db import InterfaceError, OperationalError, connection

T = TypeVar("T")


def connection_refresh() -> None:
    """Make the next query check this thread's connection first, and reconnect if it is dead.

    Call it after a long wait outside any transaction: if PostgreSQL restarted meanwhile, the old connection's
    socket is closed and the first query on it would fail, losing what the worker came back to do. The check
    is one `SELECT 1` (CONN_HEALTH_CHECKS) on the next query; inside a transaction nothing is done, since the
    connection cannot be swapped there.
    """
    if not connection.in_atomic_block:
        connection.close_if_unusable_or_obsolete()


# Where `db_call` runs ORM work: a process's pool of database threads (the asynchronous step executor sets
# it for the coroutines it runs), or, when unset, the thread that is driving the coroutine synchronously.
_executor: ContextVar[Executor | None] = ContextVar("aios_db_executor", default=None)


@contextmanager
def db_executor(executor: Executor) -> Iterator[None]:
    """Run the `db_call`s of coroutines started inside this block on `executor`'s threads."""
    token = _executor.set(executor)
    try:
        yield
    finally:
        _executor.reset(token)


async def db_call(function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run synchronous database work from a coroutine without blocking its event loop.

    On the asynchronous step executor it runs on the process's database threads (each with its own
    connection), so many steps' bookkeeping overlaps their model calls. Driven by a synchronous caller
    (`async_to_sync`), it runs back on that caller's thread, in its connection and transaction: what the
    caller wrote and has not committed stays visible, as with any direct call.
    """
    executor = _executor.get()
    if executor is None:
        return await sync_to_async(function, thread_sensitive=True)(*args, **kwargs)
    loop = asyncio.get_running_loop()
    # In the caller's context (a copy): the step's run id on log lines and its trace span reach the thread.
    work = functools.partial(copy_context().run, _on_database_thread, function, args, kwargs)
    return await loop.run_in_executor(executor, work)


def _on_database_thread(function: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
    # These threads live as long as the process and never pass a request or task boundary, where Django would
    # check their connections: a connection that failed (PostgreSQL restarted) is closed here, so the thread's
    # next job opens a new one instead of failing on the dead socket for good.
    try:
        return function(*args, **kwargs)
    except (OperationalError, InterfaceError):
        connection.close()
        raise
