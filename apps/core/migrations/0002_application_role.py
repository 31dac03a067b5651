from __future__ import annotations

from typing import Any

from django.db import migrations

from apps.core.db import application_role_grant, application_role_revoke


def grant(apps: Any, schema_editor: Any) -> None:
    application_role_grant(schema_editor)


def revoke(apps: Any, schema_editor: Any) -> None:
    application_role_revoke(schema_editor)


class Migration(migrations.Migration):
    """The application role's privileges: on the tables there are, and by default on those to come.

    A database migrated before the two roles existed gets them here; a new one gets the default privileges
    early, and every later `append_only` takes UPDATE and DELETE back on its table.
    """

    dependencies = [("core", "0001_extensions")]

    operations = [migrations.RunPython(grant, revoke)]
