"""Duties one process performs at a time across every host: the lease rows of `SingletonLease`.

Each call is one statement in its own transaction, timed by the database's clock (`now()`), so hosts whose clocks
disagree still agree on who holds a lease, and nothing outlives the statement on the connection: behind
PgBouncer in transaction mode the next statement may run on another server connection, which is why a
session-level advisory lock cannot do this job (it stays with the server connection that took it, where the
holder can no longer release it and any other client that lands there inherits it).
"""

from __future__ import annotations

import os
import socket
import uuid

from django.db import connection

# One statement: creates the row the first time (a test database is emptied between tests, and a new
# deployment has none), and otherwise takes it only when it is free or its lease ran out.
_CLAIM_SQL = """
INSERT INTO runs_singletonlease (name, holder, expires_at, claimed_at)
VALUES (%(name)s, %(holder)s, now() + make_interval(secs => %(seconds)s), now())
ON CONFLICT (name) DO UPDATE
   SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at, claimed_at = EXCLUDED.claimed_at
 WHERE runs_singletonlease.expires_at IS NULL OR runs_singletonlease.expires_at < now()
RETURNING name
"""

_RENEW_SQL = """
UPDATE runs_singletonlease SET expires_at = now() + make_interval(secs => %(seconds)s)
 WHERE name = %(name)s AND holder = %(holder)s AND expires_at >= now()
"""

_RELEASE_SQL = "UPDATE runs_singletonlease SET expires_at = NULL WHERE name = %(name)s AND holder = %(holder)s"


def lease_holder_name() -> str:
    """A name for one claim by this process: host and pid for an operator reading the row, and a random part
    so two claims by the same process (or a reused pid) never pass for each other."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"[:200]


def lease_claim(*, name: str, holder: str, seconds: float) -> bool:
    """Take the duty `name` for `seconds` if no one holds it or its holder's lease ran out; True if taken."""
    with connection.cursor() as cursor:
        cursor.execute(_CLAIM_SQL, {"name": name, "holder": holder, "seconds": seconds})
        return cursor.fetchone() is not None


def lease_renew(*, name: str, holder: str, seconds: float) -> bool:
    """Extend `holder`'s lease by `seconds` from now; False when it ran out (another process may hold the duty
    now, so the caller must stop performing it)."""
    with connection.cursor() as cursor:
        cursor.execute(_RENEW_SQL, {"name": name, "holder": holder, "seconds": seconds})
        return cursor.rowcount == 1


def lease_release(*, name: str, holder: str) -> None:
    """Give the duty back at once (a no-op when `holder` no longer holds it)."""
    with connection.cursor() as cursor:
        cursor.execute(_RELEASE_SQL, {"name": name, "holder": holder})
