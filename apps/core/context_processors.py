"""Template context shared by every page."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest


def product(request: HttpRequest) -> dict[str, Any]:
    """The product name and whether the model server is the development one (the UI labels it)."""
    return {
        "product_name": "AIOS",
        "inference_is_development_server": settings.AIOS_INFERENCE_URL.rstrip("/").endswith(
            f":{settings.AIOS_INFERENCE_PORT}"
        )
        and "127.0.0.1" in settings.AIOS_INFERENCE_URL,
    }
