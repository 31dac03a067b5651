"""Per-request context that the audit chain reads without threading arguments through every service."""

from __future__ import annotations

from contextvars import ContextVar

request_id: ContextVar[str | None] = ContextVar("aios_request_id", default=None)
