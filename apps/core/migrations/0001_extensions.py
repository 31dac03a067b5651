from __future__ import annotations

from django.db import migrations

from apps.core.db import REFUSE_FUNCTION_SQL, SuperuserExtension


class Migration(migrations.Migration):
    """Database extensions and shared functions every later migration may rely on."""

    initial = True
    dependencies: list[tuple[str, str]] = []

    operations = [
        # Created by the server's administrator beforehand: migrations run as the owner, no superuser.
        SuperuserExtension("vector"),
        migrations.RunSQL(REFUSE_FUNCTION_SQL, reverse_sql="DROP FUNCTION IF EXISTS aios_refuse_change();"),
    ]
