"""A1: the role web, workers and beat connect as cannot rewrite the audit trail (security review H1).

A connection of its own as the application role (the user of DATABASE_URL, with its password, as the product
connects) tries every way that role could change or drop append-only rows on every append-only table: UPDATE,
DELETE, TRUNCATE, switching the triggers off, taking the table over, dropping it, and turning every trigger off
for its session. Each attempt runs in a transaction that is rolled back, so nothing changes if one got through.
tests/core/test_database_roles.py checks the same role's privileges table by table; this is the suite's figure.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from django.conf import settings
from django.db import connection
from psycopg import errors

from apps.core.db import append_only_tables
from apps.core.env import database_from_url
from tests.support.figures import record_figure

pytestmark = pytest.mark.django_db

PER_TABLE = [
    "UPDATE {table} SET id = id",
    "DELETE FROM {table}",
    "TRUNCATE {table}",
    "ALTER TABLE {table} DISABLE TRIGGER USER",
    "ALTER TABLE {table} DISABLE TRIGGER aios_append_only",
    "ALTER TABLE {table} DISABLE TRIGGER aios_append_only_truncate",
    "ALTER TABLE {table} OWNER TO CURRENT_USER",
    "DROP TABLE {table} CASCADE",
]
SESSION_WIDE = ["SET session_replication_role = replica", "ALTER ROLE CURRENT_USER SUPERUSER"]


def attempt(raw: psycopg.Connection[Any], statement: str) -> bool:
    """True when PostgreSQL refused `statement` for want of privilege (rolled back either way)."""
    try:
        with raw.transaction(force_rollback=True), raw.cursor() as cursor:
            cursor.execute(statement)
    except errors.InsufficientPrivilege:
        return True
    return False


def test_a1_the_application_role_cannot_rewrite_append_only_tables() -> None:
    application = database_from_url("DATABASE_URL", settings.DATABASE_URL)
    owner = connection.settings_dict
    assert application["USER"] != owner["USER"], "DATABASE_URL names the owner: there is no separate app role"
    with connection.cursor() as cursor:
        tables = append_only_tables(cursor)
        cursor.execute(
            "SELECT rolname, rolsuper FROM pg_roles WHERE rolname IN (%s, %s)", [application["USER"], owner["USER"]]
        )
        superusers = {name for name, superuser in cursor.fetchall() if superuser}
    assert {"audit_auditevent", "audit_auditanchor"} <= set(tables), tables
    statements = [template.format(table=f'"{table}"') for table in tables for template in PER_TABLE] + SESSION_WIDE
    with psycopg.connect(
        host=application["HOST"],
        port=application["PORT"],
        dbname=owner["NAME"],
        user=application["USER"],
        password=application["PASSWORD"] or None,
        connect_timeout=5,
    ) as raw:
        # The control: the role is connected and reads the trail, so each refusal below is about privilege.
        raw.execute('SELECT count(*) FROM "audit_auditevent"').fetchone()
        raw.rollback()
        allowed = [statement for statement in statements if not attempt(raw, statement)]
    forbidden = len(statements) - len(allowed)
    ok = not allowed and not superusers
    record_figure(f"A1 app_role_forbidden {forbidden} of {len(statements)} {'ok' if ok else 'FAIL'}")
    assert allowed == [], f"the application role may: {allowed}"
    # Neither the application nor the owner that runs migrations is a superuser (a superuser bypasses all this).
    assert superusers == set(), f"superuser roles among the product's: {superusers}"
