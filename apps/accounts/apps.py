from __future__ import annotations

from django.apps import AppConfig


class AccountsConfig(AppConfig):
    """Users, roles (groups) and teams."""

    name = "apps.accounts"
    label = "accounts"

    def ready(self) -> None:
        from axes.signals import user_locked_out
        from django.contrib.auth.signals import user_login_failed
        from django.db.models.signals import post_migrate

        from apps.accounts.roles import roles_sync
        from apps.accounts.signals import on_locked_out, on_login_failed

        post_migrate.connect(roles_sync, dispatch_uid="aios-roles-sync")
        user_login_failed.connect(on_login_failed, dispatch_uid="aios-login-failed")
        user_locked_out.connect(on_locked_out, dispatch_uid="aios-login-locked")

        from apps.accounts import audit_receivers, sockets

        audit_receivers.connect()
        sockets.connect()
