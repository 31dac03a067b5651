#!/usr/bin/env python
"""Django's command-line entry point for AIOS.

Commands that change the schema connect as the owner role (DATABASE_OWNER_URL); every other command, like web,
workers and beat, as the application role (DATABASE_URL). The role is chosen here, before the settings load,
through AIOS_DATABASE_ROLE: a process holds one connection role for its whole life, so every migration
operation, RunPython function and post_migrate handler runs as the owner without naming a second database
alias (which Django would treat as a second database: its own test database, its own transactions).
"""

from __future__ import annotations

import os
import sys

OWNER_COMMANDS = frozenset({"migrate"})


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aios_web.settings")
    if len(sys.argv) > 1 and sys.argv[1] in OWNER_COMMANDS:
        os.environ["AIOS_DATABASE_ROLE"] = "owner"
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
