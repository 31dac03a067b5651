"""The one paginator of every API list."""

from __future__ import annotations

from django.conf import settings
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request

from apps.core.exceptions import ValidationFailed

# Far beyond any real list, and still inside PostgreSQL's bigint: a larger offset is a client error.
MAX_OFFSET = 1_000_000_000


class BoundedLimitOffsetPagination(LimitOffsetPagination):
    """`?limit=&offset=` paging with a ceiling: `limit` at most settings.AIOS_API_MAX_PAGE_SIZE.

    DRF's own class silently falls back to the default on a malformed value and has no ceiling, so
    `?limit=1000000` returned every visible row with its inputs and outputs. Here a limit that is not a
    whole number from 1 to the maximum, or an offset that is not one from 0 to MAX_OFFSET, is a 400 that
    says what is allowed, shaped as every refusal of the API is: `{"detail": ..., "fields": {...}}`."""

    def get_limit(self, request: Request) -> int | None:
        self.max_limit = settings.AIOS_API_MAX_PAGE_SIZE
        raw = request.query_params.get(self.limit_query_param)
        if raw is None or raw == "":
            return min(self.default_limit or self.max_limit, self.max_limit)
        return _bounded(raw, name=self.limit_query_param, low=1, high=self.max_limit)

    def get_offset(self, request: Request) -> int:
        raw = request.query_params.get(self.offset_query_param)
        if raw is None or raw == "":
            return 0
        return _bounded(raw, name=self.offset_query_param, low=0, high=MAX_OFFSET)


def _bounded(raw: str, *, name: str, low: int, high: int) -> int:
    message = f"{name} must be a whole number from {low} to {high}."
    if not raw.isascii() or not raw.isdigit() or len(raw) > 12:
        raise ValidationFailed(message, fields={name: [message]})
    value = int(raw)
    if not low <= value <= high:
        raise ValidationFailed(message, fields={name: [message]})
    return value
