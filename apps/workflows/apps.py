from __future__ import annotations

from django.apps import AppConfig


class WorkflowsConfig(AppConfig):
    """Workflows and their immutable published versions."""

    name = "apps.workflows"
    label = "workflows"

    def ready(self) -> None:
        from apps.core.secrets import register_encrypted_field

        # Rotation (manage.py credentials_rotate) re-encrypts every registered column.
        register_encrypted_field(
            "workflows.Trigger", "secret", name="webhook_secrets", description="webhook signing secret"
        )
