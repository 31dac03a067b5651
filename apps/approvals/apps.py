from __future__ import annotations

from django.apps import AppConfig


class ApprovalsConfig(AppConfig):
    """Approval requests that park runs until a person decides."""

    name = "apps.approvals"
    label = "approvals"

    def ready(self) -> None:
        from apps.approvals import services
        from apps.runs import hooks

        hooks.on_wait["approval"] = services.approval_request_open
        hooks.on_approval_due.append(services.approval_request_expire)
