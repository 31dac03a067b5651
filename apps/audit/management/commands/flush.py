"""`manage.py flush`, able to empty append-only tables.

Django's flush TRUNCATEs every table, which the append-only triggers refuse. Emptying the whole database
is an owner-level reset (tests use it between transactional tests), so the TRUNCATE triggers are switched
off for its duration only, and always switched back on.
"""

from __future__ import annotations

from typing import Any

from django.core.management.commands.flush import Command as DjangoFlushCommand
from django.db import connections

from apps.audit.db import APPEND_ONLY_TRUNCATE_TRIGGER, append_only_tables


class Command(DjangoFlushCommand):
    def handle(self, **options: Any) -> None:
        connection = connections[options["database"]]
        with connection.cursor() as cursor:
            tables = append_only_tables(cursor)
            for table in tables:
                cursor.execute(f'ALTER TABLE "{table}" DISABLE TRIGGER {APPEND_ONLY_TRUNCATE_TRIGGER}')
        try:
            super().handle(**options)
        finally:
            with connection.cursor() as cursor:
                for table in tables:
                    cursor.execute(f'ALTER TABLE "{table}" ENABLE TRIGGER {APPEND_ONLY_TRUNCATE_TRIGGER}')
