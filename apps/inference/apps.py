from __future__ import annotations

from django.apps import AppConfig


class InferenceConfig(AppConfig):
    """Model calls (the client module) and the development inference server."""

    name = "apps.inference"
    label = "inference"

    def ready(self) -> None:
        from apps.core.secrets import register_encrypted_field

        # Rotation (manage.py credentials_rotate) re-encrypts every registered column.
        register_encrypted_field(
            "inference.ModelEndpoint", "token_encrypted", name="model_endpoints", description="model endpoint token"
        )
