"""REST API plumbing shared by every app (the paginator and throttles are in pagination.py and throttling.py:
DRF's APIView reads those settings while this module, which imports it, would still be loading)."""

from __future__ import annotations

from typing import Any

from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from apps.core.exceptions import ApplicationError, RateLimited


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, plus domain refusals rendered as `{"detail": ..., **extra}` with their status (and
    Retry-After on a 429)."""
    if isinstance(exc, ApplicationError):
        response = Response({"detail": exc.message, **exc.extra}, status=exc.status_code)
        if isinstance(exc, RateLimited):
            response["Retry-After"] = str(exc.retry_after)
        return response
    return drf_exception_handler(exc, context)
