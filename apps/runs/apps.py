from __future__ import annotations

from django.apps import AppConfig


class RunsConfig(AppConfig):
    """Runs of published workflow versions and the engine that executes them."""

    name = "apps.runs"
    label = "runs"
