"""Template context about the model server, for the banner that labels the development server."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from apps.inference.selectors import inference_server_is_development


def inference(request: HttpRequest) -> dict[str, Any]:
    """`inference_is_development_server`, evaluated only for signed-in pages that render the banner."""
    if not request.user.is_authenticated:
        return {}
    return {"inference_is_development_server": inference_server_is_development()}
