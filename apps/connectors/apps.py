from __future__ import annotations

from django.apps import AppConfig


class ConnectorsConfig(AppConfig):
    """Named, team-owned connections to outside systems (HTTP APIs, SMTP, SQL databases, mailboxes), their
    encrypted secrets, and the code that reaches those systems for the connector steps."""

    name = "apps.connectors"
    label = "connectors"

    def ready(self) -> None:
        from apps.core.secrets import register_encrypted_field

        # Rotation (manage.py credentials_rotate) re-encrypts every registered column.
        register_encrypted_field(
            "connectors.Connection", "secrets_encrypted", name="connections", description="connection secret"
        )
