"""Keeping a worker's database connection useful across long waits."""

from __future__ import annotations

from django.db import connection


def connection_refresh() -> None:
    """Make the next query check this thread's connection first, and reconnect if it is dead.

    Call it after a long wait outside any transaction (a model call, a step that ran for minutes): if
    PostgreSQL restarted meanwhile, the old connection's socket is closed and the first query on it would
    fail, losing what the worker came back to record. The check is one `SELECT 1` (CONN_HEALTH_CHECKS) on
    the next query; inside a transaction nothing is done, since the connection cannot be swapped there.
    """
    if not connection.in_atomic_block:
        connection.close_if_unusable_or_obsolete()
