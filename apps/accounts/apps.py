from __future__ import annotations

from django.apps import AppConfig


class AccountsConfig(AppConfig):
    """Users, roles (groups) and teams."""

    name = "apps.accounts"
    label = "accounts"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        from apps.accounts.roles import roles_sync

        post_migrate.connect(roles_sync, dispatch_uid="aios-roles-sync")

        from apps.accounts import audit_receivers, sockets

        audit_receivers.connect()
        sockets.connect()
