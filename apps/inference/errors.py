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
    the same request may succeed later. `attempts` is how many requests the client made before giving up
    (1 without retries); `tokens_delivered` how many texts had already reached the caller's `on_token`
    when the call failed: a caller that retries on its own must not start over if that is non-zero, since
    the user has already seen part of the reply.
    """

    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        base_url: str | None = None,
        status_code: int | None = None,
        server_message: str | None = None,
        attempts: int = 1,
        tokens_delivered: int = 0,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.base_url = base_url
        self.status_code = status_code
        self.server_message = server_message
        self.attempts = attempts
        self.tokens_delivered = tokens_delivered

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
    """The server is busy: it refused the request because too many are running at once (HTTP 429)."""

    retryable = True


class InferenceUnavailableError(InferenceError):
    """The server, or a gateway in front of it, answered that it cannot serve right now (HTTP 502/503):
    starting up, restarting, or with no healthy backend. Often over within seconds, so worth a retry."""

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
    "InferenceUnavailableError",
    "InferenceValidationError",
]
