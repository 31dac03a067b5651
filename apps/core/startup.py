"""Start-up refusals as one line, at every entry point (manage.py, the ASGI application, Celery workers and beat).

The settings refuse a misconfiguration by raising ImproperlyConfigured with a message that names the variable
and what to set (aios_web/settings.py, apps/core/env.py). Left alone, that message is the last line of a long
traceback, and `manage.py` hides it until a command touches the settings. The entry points call
`settings_or_exit` first: the operator sees `AIOS cannot start: <message>` and the process exits with status 2.

A production web process, worker or beat also checks that its database answers before it serves anything: a
wrong DATABASE_URL is reported the same way at start-up, not as errors of the first requests or tasks later.
"""

from __future__ import annotations

import sys
from typing import NoReturn

from django.core.exceptions import ImproperlyConfigured

EXIT_STATUS = 2
# How long the start-up check waits for PostgreSQL to accept a connection.
DATABASE_CHECK_TIMEOUT_SECONDS = 10


def refuse(message: str) -> NoReturn:
    """Print the one line and stop the process."""
    line = " ".join(message.split())  # one line, whatever the message holds
    sys.stderr.write(f"AIOS cannot start: {line}\n")
    sys.stderr.flush()
    raise SystemExit(EXIT_STATUS)


def settings_or_exit(*, serving: bool = False) -> None:
    """Load the settings, or stop with their refusal as one line. With `serving` (a web process, worker, beat or
    migration) in production, also stop when the database cannot be reached."""
    from django.conf import settings

    try:
        settings.INSTALLED_APPS  # noqa: B018 - touching a setting imports the settings module
    except ImproperlyConfigured as error:
        refuse(str(error))
    if serving and settings.PRODUCTION:
        database_or_exit()


def database_or_exit() -> None:
    """Connect to the configured database once, or stop with one line naming the variable that points at it."""
    from django.conf import settings
    from django.db import DatabaseError, connection

    variable = "DATABASE_OWNER_URL" if settings.AIOS_DATABASE_ROLE == "owner" else "DATABASE_URL"
    database = settings.DATABASES["default"]
    where = f"{database['HOST']}:{database['PORT']}/{database['NAME']}"
    try:
        connection.ensure_connection()
    except DatabaseError as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        refuse(
            f"the database in {variable} ({where}) cannot be reached: {reason}. Check {variable} (host, port, "
            "user, password, sslmode) and that PostgreSQL is running and accepts this host."
        )
    finally:
        connection.close()
