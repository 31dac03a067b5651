"""System checks of the deployment (`manage.py check --deploy`)."""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Tags, register
from django.core.checks import Warning as CheckWarning
from django.db import DatabaseError, connection

from apps.core.db import APPEND_ONLY_TRUNCATE_TRIGGER

# Append-only tables whose triggers the connected role could switch off: it owns them, is a member of their
# owner's role, or is a superuser (pg_has_role is true for all three).
_UNGUARDED_TABLES_SQL = """
SELECT r.rolsuper, (
    SELECT count(DISTINCT c.oid) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
    WHERE t.tgname = %s AND pg_has_role(current_user, c.relowner, 'USAGE')
)
FROM pg_roles r WHERE r.rolname = current_user
"""


@register(Tags.security, deploy=True)
def database_role_check(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Warn when the process's role could rewrite the audit trail: a superuser, or an owner of its tables.

    Such a role works (every grant is skipped when the application and the owner are one role), but the
    append-only triggers bind neither: it could switch them off, then edit, delete or truncate audit and
    history rows. Unlike Django's own deployment checks this one queries the database, since a role's powers
    are known there only; it is not tagged `database` so that plain `check --deploy` runs it.
    """
    try:
        with connection.cursor() as cursor:
            cursor.execute(_UNGUARDED_TABLES_SQL, [APPEND_ONLY_TRUNCATE_TRIGGER])
            superuser, owned = cursor.fetchone()
    except DatabaseError as exc:
        return [
            CheckWarning(
                f"Could not check the database role's privileges: {exc}".strip(),
                hint="Run `manage.py check --deploy` where the database is reachable.",
                id="core.W002",
            )
        ]
    if not superuser and not owned:
        return []
    what = "a superuser" if superuser else f"the owner of {owned} append-only tables"
    return [
        CheckWarning(
            f"The application connects to the database as {what}: it could switch the audit and history "
            "tables' append-only triggers off and rewrite them.",
            hint=(
                "Set DATABASE_URL to a role that owns nothing and DATABASE_OWNER_URL to the owner that runs "
                'migrations (deploy/README.md, "Database roles").'
            ),
            id="core.W001",
        )
    ]
