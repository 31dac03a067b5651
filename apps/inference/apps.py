from __future__ import annotations

from django.apps import AppConfig


class InferenceConfig(AppConfig):
    """Model calls (the client module) and the development inference server."""

    name = "apps.inference"
    label = "inference"
