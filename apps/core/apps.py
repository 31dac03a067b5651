from __future__ import annotations

from django.apps import AppConfig


class CoreConfig(AppConfig):
    """Shared code with no models: permissions, env, errors, middleware, registries."""

    name = "apps.core"
    label = "core"

    def ready(self) -> None:
        from apps.core import (
            checks,  # noqa: F401  (registers the deployment checks)
            schema,  # noqa: F401  (registers the OpenAPI description of bearer tokens)
        )
