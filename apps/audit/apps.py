from __future__ import annotations

from django.apps import AppConfig


class AuditConfig(AppConfig):
    """The append-only, hash-chained audit trail."""

    name = "apps.audit"
    label = "audit"
