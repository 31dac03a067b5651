"""Database-side guarantees, as migration operations: append-only tables and the application role's privileges.

Append-only tables (the audit trail, inference call records, every history table) are guarded twice:
- triggers refuse UPDATE, DELETE and TRUNCATE for every role, so no code path (the ORM, raw SQL, an admin
  action, a cascade) can rewrite the past;
- the application role, which web, workers and beat connect as (settings.DATABASE_URL), holds only SELECT and
  INSERT on them and owns nothing, so it cannot switch those triggers off either: only a table's owner or a
  superuser may ALTER, DISABLE TRIGGER, TRUNCATE or DROP. Migrations run as the owner
  (settings.DATABASE_OWNER_URL) and grant the application role what it needs.
The one way past the guard is `append_only_purge`, for the owner only: the retention purge removes the call
records and approval decisions of runs it removes (apps/runs/retention.py); the audit trail is never purged.

On ordinary tables the application role may SELECT, INSERT, UPDATE and DELETE (and use the sequences). Tables
that later migrations create get those grants from the owner's default privileges; `append_only` takes
UPDATE and DELETE back. When both URLs name one role, every grant here is skipped: the database still works,
guarded by the triggers alone, and `manage.py check --deploy` warns (apps/core/checks.py).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.postgres.operations import CreateExtension
from django.db import connections, router
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.operations.base import Operation
from django.db.models import QuerySet

REFUSE_FUNCTION_SQL = """
CREATE OR REPLACE FUNCTION aios_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'aios: % is append-only; % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
"""

APPEND_ONLY_ROW_TRIGGER = "aios_append_only"
APPEND_ONLY_TRUNCATE_TRIGGER = "aios_append_only_truncate"

TABLE_PRIVILEGES = "SELECT, INSERT, UPDATE, DELETE"
SEQUENCE_PRIVILEGES = "USAGE, SELECT, UPDATE"
# What the application role may not do to an append-only table (it never holds TRUNCATE anywhere; revoking it
# too keeps the rule readable in one statement).
APPEND_ONLY_REVOKED = "UPDATE, DELETE, TRUNCATE"


def append_only_tables(cursor: Any) -> list[str]:
    """Names of the tables that carry the append-only TRUNCATE trigger."""
    cursor.execute(
        "SELECT DISTINCT c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid WHERE t.tgname = %s",
        [APPEND_ONLY_TRUNCATE_TRIGGER],
    )
    return [row[0] for row in cursor.fetchall()]


def application_role(schema_editor: BaseDatabaseSchemaEditor) -> str | None:
    """The application role's name, quoted for SQL; None when the migration runs as that very role.

    The name is the user of DATABASE_URL, whichever role this process connects as. A role that does not exist
    is an error here rather than a GRANT's terse one: the operator has to create it (deploy/README.md).
    """
    role = settings.DATABASE_APPLICATION_ROLE
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT current_user, EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %s)", [role])
        current, exists = cursor.fetchone()
    if role == current:
        return None
    if not exists:
        raise RuntimeError(
            f'The application role "{role}" (the user of DATABASE_URL) does not exist. Create it with '
            f'CREATE ROLE "{role}" LOGIN PASSWORD \'...\' (see deploy/README.md, "Database roles"), or set '
            "DATABASE_URL to the owner's role to run with one role."
        )
    return str(schema_editor.quote_name(role))


def application_role_grant(schema_editor: BaseDatabaseSchemaEditor) -> None:
    """Give the application role its privileges on every table and sequence there is and will be.

    Idempotent: it grants on all existing tables, sets the owner's default privileges for the tables of later
    migrations, and takes UPDATE and DELETE back from every append-only table.
    """
    role = application_role(schema_editor)
    if role is None:
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT current_schema()")
        schema = schema_editor.quote_name(cursor.fetchone()[0])
        guarded = append_only_tables(cursor)
    statements = [
        f"GRANT USAGE ON SCHEMA {schema} TO {role}",
        f"GRANT {TABLE_PRIVILEGES} ON ALL TABLES IN SCHEMA {schema} TO {role}",
        f"GRANT {SEQUENCE_PRIVILEGES} ON ALL SEQUENCES IN SCHEMA {schema} TO {role}",
        # Default privileges belong to the role that creates the objects: this one, which runs migrations.
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT {TABLE_PRIVILEGES} ON TABLES TO {role}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT {SEQUENCE_PRIVILEGES} ON SEQUENCES TO {role}",
    ]
    statements += [f"REVOKE {APPEND_ONLY_REVOKED} ON {schema_editor.quote_name(t)} FROM {role}" for t in guarded]
    for statement in statements:
        schema_editor.execute(statement)


def application_role_revoke(schema_editor: BaseDatabaseSchemaEditor) -> None:
    """Undo `application_role_grant`: the application role keeps no privilege on the schema's tables."""
    role = application_role(schema_editor)
    if role is None:
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT current_schema()")
        schema = schema_editor.quote_name(cursor.fetchone()[0])
    for statement in (
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} REVOKE ALL ON TABLES FROM {role}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} REVOKE ALL ON SEQUENCES FROM {role}",
        f"REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {role}",
        f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {schema} FROM {role}",
    ):
        schema_editor.execute(statement)


class AppendOnly(Operation):
    """Make `table` append-only: triggers refuse UPDATE, DELETE and TRUNCATE for every role, and the application
    role keeps only SELECT and INSERT on it. Needs `aios_refuse_change` (core 0001_extensions)."""

    reversible = True

    def __init__(self, table: str) -> None:
        self.table = table

    def deconstruct(self) -> tuple[str, list[str], dict[str, Any]]:
        return (self.__class__.__qualname__, [self.table], {})

    def state_forwards(self, app_label: str, state: Any) -> None:
        pass  # no model changes: the table's guarantees live in the database only

    def database_forwards(
        self, app_label: str, schema_editor: BaseDatabaseSchemaEditor, from_state: Any, to_state: Any
    ) -> None:
        if not router.allow_migrate(schema_editor.connection.alias, app_label):
            return
        table = schema_editor.quote_name(self.table)
        schema_editor.execute(
            f"CREATE TRIGGER {APPEND_ONLY_ROW_TRIGGER} BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION aios_refuse_change()"
        )
        schema_editor.execute(
            f"CREATE TRIGGER {APPEND_ONLY_TRUNCATE_TRIGGER} BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION aios_refuse_change()"
        )
        role = application_role(schema_editor)
        if role is not None:
            schema_editor.execute(f"REVOKE {APPEND_ONLY_REVOKED} ON {table} FROM {role}")

    def database_backwards(
        self, app_label: str, schema_editor: BaseDatabaseSchemaEditor, from_state: Any, to_state: Any
    ) -> None:
        if not router.allow_migrate(schema_editor.connection.alias, app_label):
            return
        table = schema_editor.quote_name(self.table)
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {APPEND_ONLY_ROW_TRIGGER} ON {table}")
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {APPEND_ONLY_TRUNCATE_TRIGGER} ON {table}")
        role = application_role(schema_editor)
        if role is not None:
            schema_editor.execute(f"GRANT UPDATE, DELETE ON {table} TO {role}")

    def describe(self) -> str:
        return f"Make {self.table} append-only"

    @property
    def migration_name_fragment(self) -> str:
        return f"append_only_{self.table}"


def append_only_purge(queryset: QuerySet[Any]) -> int:
    """Delete the rows of `queryset`, on an append-only table, inside the caller's transaction; their count.

    The one sanctioned way past the append-only guard: a retention purge of records whose subject is removed
    (apps/runs/retention.py). Only the table's owner may switch its row trigger off, so the application role
    fails here ("must be owner of table"). The trigger is off for this transaction only: DDL is transactional
    in PostgreSQL, and ALTER TABLE holds a SHARE ROW EXCLUSIVE lock to the commit, so no other session writes
    the table, let alone deletes from it, while the guard is down (writers wait; readers do not).
    """
    connection = connections[queryset.db]
    if not connection.in_atomic_block:
        raise RuntimeError("append_only_purge switches the guard off until the commit: call it inside a transaction.")
    table = connection.ops.quote_name(queryset.model._meta.db_table)
    with connection.cursor() as cursor:
        # PostgreSQL refuses ALTER TABLE on a table with deferred foreign-key checks still pending in this
        # transaction (rows inserted or deleted earlier in it): run them now, then defer again (Django's foreign
        # keys are all DEFERRABLE INITIALLY DEFERRED, and a caller may rely on that until its commit).
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute("SET CONSTRAINTS ALL DEFERRED")
        cursor.execute(f"ALTER TABLE {table} DISABLE TRIGGER {APPEND_ONLY_ROW_TRIGGER}")
        deleted = queryset._raw_delete(queryset.db)
        cursor.execute(f"ALTER TABLE {table} ENABLE TRIGGER {APPEND_ONLY_ROW_TRIGGER}")
    return int(deleted)


def append_only(table: str) -> AppendOnly:
    """A migration operation making `table` append-only (see `AppendOnly`)."""
    return AppendOnly(table)


class SuperuserExtension(CreateExtension):
    """CREATE EXTENSION for an extension only a superuser may create, such as `vector` (pgvector does not mark
    itself trusted): a no-op where it is installed already, and a clear refusal naming the statement to run where
    it is not and the migrating role is no superuser.

    Migrations run as the owner role, which is no superuser (deploy/README.md, "Database roles"), so the extension
    is created beforehand by whoever administers the server: the embedded stack's launcher does it as the
    cluster's superuser, in `aios` and in template1 (so test databases have it too); managed services let their
    admin role run CREATE EXTENSION vector.
    """

    def database_forwards(
        self, app_label: str, schema_editor: BaseDatabaseSchemaEditor, from_state: Any, to_state: Any
    ) -> None:
        connection = schema_editor.connection
        if connection.vendor == "postgresql" and router.allow_migrate(connection.alias, app_label):
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = %s), current_database(), current_user, "
                    "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user)",
                    [self.name],
                )
                installed, database, role, superuser = cursor.fetchone()
            if not installed and not superuser:
                raise RuntimeError(
                    f'The "{self.name}" extension is not installed in the database "{database}", and "{role}", '
                    f"the role running migrations, may not create it (only a superuser may). As a superuser, run "
                    f'CREATE EXTENSION IF NOT EXISTS {self.name}; in "{database}" (and in template1 if test '
                    'databases are made from it), then migrate again. See deploy/README.md, "Database roles".'
                )
        super().database_forwards(app_label, schema_editor, from_state, to_state)
