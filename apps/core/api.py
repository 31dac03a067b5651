"""REST API plumbing shared by every app (the paginator and throttles are in pagination.py and throttling.py:
DRF's APIView reads those settings while this module, which imports it, would still be loading)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from apps.core.exceptions import ApplicationError, RateLimited
from apps.core.pagination import BoundedLimitOffsetPagination


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, plus domain refusals rendered as `{"detail": ..., **extra}` with their status (and
    Retry-After on a 429)."""
    if isinstance(exc, ApplicationError):
        response = Response({"detail": exc.message, **exc.extra}, status=exc.status_code)
        if isinstance(exc, RateLimited):
            response["Retry-After"] = str(exc.retry_after)
        return response
    return drf_exception_handler(exc, context)


def paged_response(
    request: Request,
    rows: QuerySet[Any] | Sequence[Any],
    serialize: Callable[[list[Any]], Any],
    *,
    status: int = 200,
) -> Response:
    """One page of `rows` (an ordered queryset, or a list already in its order), as every API list answers:
    `{"count", "next", "previous", "results"}`, with `limit` and `offset` checked by the one paginator (a bad
    value is a 400 naming the allowed range). For the views that are functions, which have no paginator."""
    paginator = BoundedLimitOffsetPagination()
    page = paginator.paginate_queryset(rows, request)  # type: ignore[arg-type]
    response = paginator.get_paginated_response(serialize(list(page or [])))
    response.status_code = status
    return response


def paging_check(request: Request) -> None:
    """Refuse a bad `limit` or `offset` (400) before a write that answers a page, so the write is not done."""
    paginator = BoundedLimitOffsetPagination()
    paginator.get_limit(request)
    paginator.get_offset(request)


def page_schema(results: serializers.Field, name: str) -> serializers.Serializer:
    """The schema of one page as paged_response answers it, for `@extend_schema(responses=...)` of a function
    view (drf-spectacular pages a viewset's list by itself, not a function's): `results` is the field of the
    rows, e.g. `NotificationSerializer(many=True)`; `name` names the component."""
    return inline_serializer(
        name,
        fields={
            "count": serializers.IntegerField(help_text="Rows in the whole list."),
            "next": serializers.URLField(allow_null=True, help_text="The next page; null on the last."),
            "previous": serializers.URLField(allow_null=True, help_text="The page before; null on the first."),
            "results": results,
        },
    )


# The paging parameters of a function view's list (a viewset's list gets them from its paginator).
PAGE_PARAMETERS = [
    OpenApiParameter("limit", int, description="Rows in the page: 1 to AIOS_API_MAX_PAGE_SIZE (100); default 20."),
    OpenApiParameter("offset", int, description="Rows to skip before the page, from 0."),
]
