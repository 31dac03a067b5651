"""Template context shared by every page."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest


def product(request: HttpRequest) -> dict[str, Any]:
    """The product's name, for titles and headings."""
    return {"product_name": "AIOS"}
