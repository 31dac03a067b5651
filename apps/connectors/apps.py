from __future__ import annotations

from django.apps import AppConfig


class ConnectorsConfig(AppConfig):
    """Named, team-owned connections to outside systems (HTTP APIs, SMTP, SQL databases, mailboxes), their
    encrypted secrets, and the code that reaches those systems for the connector steps."""

    name = "apps.connectors"
    label = "connectors"
