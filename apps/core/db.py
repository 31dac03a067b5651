"""Database-side guarantees for append-only tables, as migration operations.

The audit chain and every history table refuse UPDATE, DELETE and TRUNCATE in the database itself, so
no code path (the ORM, raw SQL, an admin action, a cascade) can rewrite the past.
"""

from __future__ import annotations

from django.db import migrations

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


def append_only(table: str) -> migrations.RunSQL:
    """A migration operation making `table` append-only (needs `aios_refuse_change`, see core 0001_extensions)."""
    return migrations.RunSQL(
        sql=[
            f'CREATE TRIGGER {APPEND_ONLY_ROW_TRIGGER} BEFORE UPDATE OR DELETE ON "{table}" '
            "FOR EACH ROW EXECUTE FUNCTION aios_refuse_change();",
            f'CREATE TRIGGER {APPEND_ONLY_TRUNCATE_TRIGGER} BEFORE TRUNCATE ON "{table}" '
            "FOR EACH STATEMENT EXECUTE FUNCTION aios_refuse_change();",
        ],
        reverse_sql=[
            f'DROP TRIGGER IF EXISTS {APPEND_ONLY_ROW_TRIGGER} ON "{table}";',
            f'DROP TRIGGER IF EXISTS {APPEND_ONLY_TRUNCATE_TRIGGER} ON "{table}";',
        ],
    )


def append_only_tables(cursor: object) -> list[str]:
    """Names of the tables that carry the append-only TRUNCATE trigger."""
    cursor.execute(  # type: ignore[attr-defined]
        "SELECT DISTINCT c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid WHERE t.tgname = %s",
        [APPEND_ONLY_TRUNCATE_TRIGGER],
    )
    return [row[0] for row in cursor.fetchall()]  # type: ignore[attr-defined]
