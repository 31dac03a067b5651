from __future__ import annotations

from django.contrib.postgres.operations import CreateExtension
from django.db import migrations

from apps.core.db import REFUSE_FUNCTION_SQL


class Migration(migrations.Migration):
    """Database extensions and shared functions every later migration may rely on."""

    initial = True
    dependencies: list[tuple[str, str]] = []

    operations = [
        CreateExtension("vector"),
        migrations.RunSQL(REFUSE_FUNCTION_SQL, reverse_sql="DROP FUNCTION IF EXISTS aios_refuse_change();"),
    ]
