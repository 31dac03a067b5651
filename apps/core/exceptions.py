"""The one family of domain refusals that services raise and every interface renders."""

from __future__ import annotations

from typing import Any


class ApplicationError(Exception):
    """A refusal a user can act on: `message` is shown to them, `extra` carries field errors or details."""

    status_code = 400

    def __init__(self, message: str, *, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra or {}


class ValidationFailed(ApplicationError):
    """Input failed validation; `extra["fields"]` maps each field to its list of messages."""

    status_code = 400

    def __init__(self, message: str, *, fields: dict[str, list[str]]) -> None:
        super().__init__(message, extra={"fields": fields})
        self.fields = fields


class Conflict(ApplicationError):
    """The object is in a state that refuses this action (e.g. editing a published version)."""

    status_code = 409


class Forbidden(ApplicationError):
    """The user may see the object but not do this to it."""

    status_code = 403


class Unprocessable(ApplicationError):
    """Well-formed but contradicting an earlier request (e.g. an idempotency key reused with another body)."""

    status_code = 422


class RateLimited(ApplicationError):
    """Too many requests of one kind from one user; `retry_after` is the seconds until the next is accepted."""

    status_code = 429

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, extra={"retry_after": retry_after})
        self.retry_after = retry_after
