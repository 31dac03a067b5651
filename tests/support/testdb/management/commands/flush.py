"""`manage.py flush`, for the test suite only: this app is installed by aios_web/settings_test.py alone.

The test suite empties the database between transactional tests. Four things differ from Django's flush:
- the append-only TRUNCATE triggers are switched off for the flush only, and always switched back on;
- content types and permissions are kept. Service processes that live across tests (the ASGI server, the
  Celery worker) cache content-type ids, and re-created rows with new ids would make every permission
  lookup in them miss;
- the database's signed audit checkpoints are deleted with the trail they sign: left behind, they would
  make the next test's `verify_audit` report the emptied trail as a cut tail;
- a TRUNCATE that deadlocks with a task the worker is still finishing is tried again (up to five times).
Switching a trigger off takes the tables' owner, which is what pytest connects as (the test settings); the
application role cannot. Anywhere but AIOS_ENV=test the command refuses: the audit chain is never emptied by
a management command.
"""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.core.management.color import no_style
from django.core.management.sql import emit_post_migrate_signal
from django.db import DatabaseError, connections

from apps.audit.services import checkpoint_directory
from apps.core.db import APPEND_ONLY_TRUNCATE_TRIGGER, append_only_tables

FLUSH_ATTEMPTS = 5
KEPT_TABLES = frozenset({"django_content_type", "auth_permission", "django_migrations"})


class Command(BaseCommand):
    help = "Empty the test database (test suite only)."
    stealth_options = ("reset_sequences", "allow_cascade", "inhibit_post_migrate")

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--noinput", "--no-input", action="store_false", dest="interactive")
        parser.add_argument("--database", default="default")

    def handle(self, **options: Any) -> None:
        if settings.AIOS_ENV != "test":
            raise CommandError("flush would erase the audit chain; it is available to the test suite only.")
        database = options["database"]
        connection = connections[database]
        tables = [
            table
            for table in connection.introspection.django_table_names(only_existing=True, include_views=False)
            if table not in KEPT_TABLES
        ]
        statements = connection.ops.sql_flush(
            no_style(),
            tables,
            reset_sequences=options.get("reset_sequences", True),
            allow_cascade=options.get("allow_cascade", False),
        )
        with connection.cursor() as cursor:
            guarded = append_only_tables(cursor)
            for table in guarded:
                cursor.execute(f'ALTER TABLE "{table}" DISABLE TRIGGER {APPEND_ONLY_TRUNCATE_TRIGGER}')
        try:
            for attempt in range(FLUSH_ATTEMPTS):
                try:
                    connection.ops.execute_sql_flush(statements)
                    break
                except DatabaseError as error:
                    # A task the session's worker is still finishing for the test that just ended (a verification,
                    # a relay) may lock a table the TRUNCATE needs while it waits for one the TRUNCATE holds:
                    # PostgreSQL aborts one of them. When it picks the flush, the task then commits and the next
                    # try empties what it wrote.
                    if "deadlock detected" not in str(error) or attempt == FLUSH_ATTEMPTS - 1:
                        raise
                    time.sleep(0.2 * (attempt + 1))
        finally:
            with connection.cursor() as cursor:
                for table in guarded:
                    cursor.execute(f'ALTER TABLE "{table}" ENABLE TRIGGER {APPEND_ONLY_TRUNCATE_TRIGGER}')
        for checkpoint in checkpoint_directory(database).glob("checkpoint-*.json"):
            checkpoint.unlink(missing_ok=True)
        if statements and not options.get("inhibit_post_migrate", False):
            emit_post_migrate_signal(options.get("verbosity", 1), options["interactive"], database)
