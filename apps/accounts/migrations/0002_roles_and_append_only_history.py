from __future__ import annotations

from typing import Any

from django.db import migrations

from apps.accounts.roles import ROLES
from apps.core.db import append_only


def create_roles(apps: Any, schema_editor: Any) -> None:
    group_model = apps.get_model("auth", "Group")
    for role in ROLES:
        group_model.objects.get_or_create(name=role)


class Migration(migrations.Migration):
    """The four roles as groups (their permissions: `roles_sync` after migrate), append-only history."""

    dependencies = [
        ("accounts", "0001_initial"),
        ("core", "0001_extensions"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]

    operations = [
        migrations.RunPython(create_roles, migrations.RunPython.noop),
        append_only("accounts_historicalteam"),
    ]
