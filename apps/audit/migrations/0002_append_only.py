from __future__ import annotations

from django.db import migrations

from apps.core.db import append_only


class Migration(migrations.Migration):
    """The audit chain refuses UPDATE, DELETE and TRUNCATE in the database."""

    dependencies = [("audit", "0001_initial"), ("core", "0001_extensions")]

    operations = [append_only("audit_auditevent")]
