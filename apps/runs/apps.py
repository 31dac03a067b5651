from __future__ import annotations

from django.apps import AppConfig


class RunsConfig(AppConfig):
    """Runs of published workflow versions and the engine that executes them."""

    name = "apps.runs"
    label = "runs"

    def ready(self) -> None:
        # Registers the engine's wait hooks for child runs (sub-workflows and for-each).
        from apps.runs import children  # noqa: F401
