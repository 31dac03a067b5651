"""Typed inference errors: what went wrong, said so that a business user can act on it.

Every failure of a model call surfaces as one of these, whatever the transport or client library raised,
so step code, retry policies and run pages handle one family. They are plain exceptions with simple
attributes, picklable (they cross Celery and process boundaries) and free of response objects.
"""

from __future__ import annotations

from typing import Any, ClassVar


class InferenceError(Exception):
    """Base of all inference failures.

    `message` is the sentence shown on a run page; `base_url` names the server; `status_code` and
    `server_message` keep the server's own words for provenance; `retryable` tells a retry policy whether
    the same request may succeed later.
    """

    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        base_url: str | None = None,
        status_code: int | None = None,
        server_message: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.base_url = base_url
        self.status_code = status_code
        self.server_message = server_message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only constructor arguments are not in `args`; rebuild from the message and restore the
        # attributes through the instance dict, which BaseException.__setstate__ applies.
        return (self.__class__, (self.message,), self.__dict__.copy())


class InferenceValidationError(InferenceError):
    """The server refused the request as invalid (bad parameters, prompt too long, malformed body).

    Retrying the same request cannot help; the step's configuration or input must change.
    """


class InferenceOverloadedError(InferenceError):
    """The server is busy (too many concurrent requests) or temporarily unavailable."""

    retryable = True


class InferenceGenerationError(InferenceError):
    """The model failed while generating, or the reply stream broke off or was unreadable."""

    retryable = True


class InferenceTimeoutError(InferenceError):
    """The server accepted the call but did not answer within the configured time."""

    retryable = True


class InferenceConnectionError(InferenceError):
    """The server could not be reached, or dropped the connection."""

    retryable = True


class InferenceAuthenticationError(InferenceError):
    """The server refused the endpoint's credentials (HTTP 401/403)."""


__all__ = [
    "InferenceAuthenticationError",
    "InferenceConnectionError",
    "InferenceError",
    "InferenceGenerationError",
    "InferenceOverloadedError",
    "InferenceTimeoutError",
    "InferenceValidationError",
]
