#!/usr/bin/env python
"""Django's command-line entry point for AIOS.

Commands that change the schema, and the retention purge, connect as the owner role (DATABASE_OWNER_URL);
every other command, like web, workers and beat, as the application role (DATABASE_URL). The role is chosen
here, before the settings load, through AIOS_DATABASE_ROLE: a process holds one connection role for its whole
life, so every migration operation, RunPython function and post_migrate handler runs as the owner without naming
a second database alias (which Django would treat as a second database: its own test database, its own transactions).
"""

from __future__ import annotations

import os
import sys

# purge_runs deletes append-only model-call records and approval decisions of the runs it removes, which only
# the owner may (apps/core/db.py, append_only_purge).
OWNER_COMMANDS = frozenset({"migrate", "purge_runs"})
# Commands that serve or change the database for good: in production they stop at once, with one line, when the
# database cannot be reached (apps/core/startup.py).
SERVING_COMMANDS = frozenset({"migrate", "runserver", "mail_inbound"})


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aios_web.settings")
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command in OWNER_COMMANDS:
        os.environ["AIOS_DATABASE_ROLE"] = "owner"
    from django.core.management import execute_from_command_line

    from apps.core.startup import settings_or_exit

    # A refused configuration is one line, not a traceback (and not hidden behind `help`, as Django would).
    settings_or_exit(serving=command in SERVING_COMMANDS)

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
