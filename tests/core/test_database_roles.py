"""The application role may read and insert audit and history rows and nothing more; migrations run as the owner.

pytest connects as the owner (it creates, migrates and empties the test database). These tests open a
connection of their own as the application role, the user of DATABASE_URL, the way web, workers and beat
connect, and try what an attacker holding that role would try.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.apps import apps
from django.conf import settings
from django.db import connection
from django.db.models import Model
from django.db.models.sql import InsertQuery
from django.utils import timezone
from psycopg import errors

from apps.accounts.models import Team
from apps.audit.models import AuditAnchor, AuditEvent
from apps.core.checks import database_role_check
from apps.core.db import append_only_tables
from apps.core.env import database_from_url
from tests.support.processes import REPO, database_url_as

pytestmark = pytest.mark.django_db

# The audit trail, its anchors, a history table and the inference call records: one of each kind.
GUARDED = ["audit_auditevent", "audit_auditanchor", "accounts_historicalteam", "inference_inferencecall"]


class ApplicationConnection:
    """The test database as the application role; each call runs its statements in one transaction, rolled back."""

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw

    def run(self, *statements: str | tuple[str, Any]) -> list[tuple[Any, ...]]:
        """Run `statements` (SQL, or SQL with its parameters) in one transaction; the last one's rows."""
        rows: list[tuple[Any, ...]] = []
        with self.raw.transaction(force_rollback=True), self.raw.cursor() as cursor:
            for statement in statements:
                sql, params = statement if isinstance(statement, tuple) else (statement, None)
                cursor.execute(sql, params)
                rows = cursor.fetchall() if cursor.description else []
        return rows


def django_insert(instance: Model) -> tuple[str, Any]:
    """The INSERT statement Django sends for `instance`, to send on another connection."""
    model = type(instance)
    query = InsertQuery(model)
    query.insert_values([f for f in model._meta.local_concrete_fields if not f.primary_key], [instance])
    [(sql, params)] = query.get_compiler(connection=connection).as_sql()
    return sql, params


def application_settings() -> dict[str, Any]:
    return database_from_url("DATABASE_URL", settings.DATABASE_URL)


@pytest.fixture
def as_application(db: Any) -> Iterator[ApplicationConnection]:
    application = application_settings()
    owner = connection.settings_dict
    assert application["USER"] != owner["USER"], (
        f"DATABASE_URL and DATABASE_OWNER_URL both name {owner['USER']!r}: with one role the application could "
        "switch the append-only triggers off. The embedded test stack creates both; elsewhere set both URLs."
    )
    raw = psycopg.connect(
        host=application["HOST"],
        port=application["PORT"],
        dbname=owner["NAME"],  # the test database
        user=application["USER"],
        password=application["PASSWORD"] or None,
        connect_timeout=5,
    )
    try:
        yield ApplicationConnection(raw)
    finally:
        raw.close()


@pytest.mark.parametrize("table", GUARDED)
@pytest.mark.parametrize(
    "statement",
    [
        "ALTER TABLE {table} DISABLE TRIGGER USER",
        "ALTER TABLE {table} DISABLE TRIGGER aios_append_only",
        "ALTER TABLE {table} DISABLE TRIGGER aios_append_only_truncate",
        "DROP TABLE {table}",
    ],
)
def test_the_application_cannot_alter_an_append_only_table(as_application, table, statement):
    with pytest.raises(errors.InsufficientPrivilege, match=f"must be owner of table {table}"):
        as_application.run(statement.format(table=table))


@pytest.mark.parametrize("table", GUARDED)
@pytest.mark.parametrize("statement", ["UPDATE {table} SET id = id", "DELETE FROM {table}", "TRUNCATE {table}"])
def test_the_application_may_not_change_append_only_rows(as_application, table, statement):
    # "permission denied", not the trigger's "append-only": the privilege is missing before any trigger runs.
    with pytest.raises(errors.InsufficientPrivilege, match=f"permission denied for table {table}"):
        as_application.run(statement.format(table=table))


def test_the_application_cannot_turn_every_trigger_off_for_its_session(as_application):
    with pytest.raises(errors.InsufficientPrivilege, match="permission denied to set parameter"):
        as_application.run("SET session_replication_role = replica")


def test_the_application_reads_and_inserts_audit_and_history_rows(as_application):
    now = timezone.now()
    event = AuditEvent(
        stream="system", stream_seq=1, created_at=now, verb="test.role", prev_hash="0" * 64, hash="a" * 64
    )
    anchor = AuditAnchor(
        seq=1, created_at=now, heads={}, merkle_root="0" * 64, snapshot="1:1:", prev_hash="0" * 64, hash="b" * 64
    )
    history = Team.history.model(
        id=1, name="Claims", slug="claims", group_id=1, created_at=now, history_date=now, history_type="+"
    )
    for instance in (event, anchor, history):
        count = f'SELECT count(*) FROM "{type(instance)._meta.db_table}"'
        [(before,)] = as_application.run(count)
        [(after,)] = as_application.run(django_insert(instance), count)
        assert after == before + 1
    for table in append_only_tables(connection.cursor()):
        assert len(as_application.run(f'SELECT * FROM "{table}" LIMIT 1')) <= 1


def test_the_application_changes_ordinary_tables(as_application):
    as_application.run("UPDATE runs_run SET status = status", "DELETE FROM runs_run WHERE id < 0")
    [(name,)] = as_application.run(
        "INSERT INTO auth_group (name) VALUES ('role test')",
        "UPDATE auth_group SET name = 'role test, renamed' WHERE name = 'role test'",
        "DELETE FROM auth_group WHERE name = 'role test, renamed' RETURNING name",
    )
    assert name == "role test, renamed"


def test_privileges_follow_each_tables_kind(as_application):
    """Every table, including those of future migrations (default privileges), gets what its kind allows."""
    role = application_settings()["USER"]
    with connection.cursor() as cursor:
        guarded = set(append_only_tables(cursor))
        cursor.execute(
            "SELECT c.relname, p.privilege, has_table_privilege(%s, c.oid, p.privilege) "
            "FROM pg_class c CROSS JOIN unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', "
            "'REFERENCES', 'TRIGGER']) AS p(privilege) "
            "WHERE c.relkind IN ('r', 'p') AND c.relnamespace = current_schema()::regnamespace",
            [role],
        )
        held: dict[str, set[str]] = {}
        for table, privilege, granted in cursor.fetchall():
            held.setdefault(table, set())
            if granted:
                held[table].add(privilege)
        cursor.execute(
            "SELECT count(*) FROM pg_class WHERE relowner = (SELECT oid FROM pg_roles WHERE rolname = %s)", [role]
        )
        [owned] = cursor.fetchone()
        cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", [role])
        [superuser] = cursor.fetchone()
    assert not superuser and owned == 0
    assert {"audit_auditevent", "audit_auditanchor"} <= guarded
    wrong = {
        table: sorted(privileges)
        for table, privileges in held.items()
        if privileges != ({"SELECT", "INSERT"} if table in guarded else {"SELECT", "INSERT", "UPDATE", "DELETE"})
    }
    assert not wrong, f"the application role's privileges differ from its tables' kind: {wrong}"


def test_every_history_table_is_append_only():
    history_tables = {
        model._meta.db_table for model in apps.get_models() if getattr(model, "instance_type", None) is not None
    }
    assert history_tables, "no simple-history model found: the test no longer sees them"
    with connection.cursor() as cursor:
        assert history_tables <= set(append_only_tables(cursor))


def test_the_deployment_check_warns_about_an_owner_and_not_about_the_application():
    # pytest is connected as the owner: exactly what the check is there to catch in production.
    assert [message.id for message in database_role_check()] == ["core.W001"]
    env = {**os.environ, "DATABASE_URL": database_url_as(application_settings()), "AIOS_DATABASE_ROLE": "application"}
    command = [sys.executable, "manage.py", "check", "--deploy"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert "core.W00" not in result.stdout + result.stderr, result.stdout + result.stderr


def test_migrate_alone_connects_as_the_owner(monkeypatch):
    import django.core.management

    import manage

    seen: list[str | None] = []

    def execute(argv: list[str]) -> None:
        seen.append(os.environ.get("AIOS_DATABASE_ROLE"))

    monkeypatch.setattr(django.core.management, "execute_from_command_line", execute)
    for command in ("migrate", "seed_demo", "shell"):
        monkeypatch.setenv("AIOS_DATABASE_ROLE", "application")
        monkeypatch.setattr(sys, "argv", ["manage.py", command])
        manage.main()
    assert seen == ["owner", "application", "application"]


@pytest.mark.parametrize(
    ("env", "connects", "application"),
    [
        # The embedded stack's defaults: two roles.
        ({}, "aios_app", "aios_app"),
        ({"AIOS_DATABASE_ROLE": "owner"}, "aios_owner", "aios_app"),
        # One URL: one role for everything.
        ({"DATABASE_URL": "postgres://aios@db/aios", "AIOS_DATABASE_ROLE": "owner"}, "aios", "aios"),
        (
            {
                "DATABASE_URL": "postgres://app@db/aios",
                "DATABASE_OWNER_URL": "postgres://owner@db/aios",
                "AIOS_DATABASE_ROLE": "owner",
            },
            "owner",
            "app",
        ),
    ],
)
def test_settings_pick_the_role_the_process_connects_as(env, connects, application, tmp_path):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIOS_", "DJANGO_", "DATABASE_"))}
    # The embedded stack's development mode (production needs its keys set; development generates them here).
    base.update(AIOS_ENV="development", AIOS_DATA_DIR=str(tmp_path))
    script = "import aios_web.settings as s; print(s.DATABASES['default']['USER'], s.DATABASE_APPLICATION_ROLE)"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env={**base, **env}, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.split() == [connects, application], result.stderr
