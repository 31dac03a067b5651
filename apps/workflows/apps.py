from __future__ import annotations

from django.apps import AppConfig


class WorkflowsConfig(AppConfig):
    """Workflows and their immutable published versions."""

    name = "apps.workflows"
    label = "workflows"
