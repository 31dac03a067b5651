"""Trying a call again: exponential backoff with jitter for failures that may pass (overload, 5xx, dropped
connections, timeouts), but never once part of the reply has reached the caller.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import replace

from apps.inference.errors import InferenceError

from .results import InferenceResult, OnToken

logger = logging.getLogger(__name__)

# The longest wait between two attempts, whatever `backoff` and the attempt number say: beyond this a
# step is better off failing visibly (and being retried by a person or a policy) than sitting silent.
MAX_BACKOFF_SECONDS = 10.0


def backoff_delay(retry: int, backoff: float) -> float:
    """Seconds to wait before retry number `retry` (1 for the first): `backoff` doubled per retry, capped
    at MAX_BACKOFF_SECONDS, with its upper half random so that callers failing together (a burst that
    overloaded the server) do not all come back together."""
    ceiling = min(MAX_BACKOFF_SECONDS, backoff * 2.0 ** max(retry - 1, 0))
    # Jitter for spreading load, not secrecy: the standard generator is the right tool.
    return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311


def check_retry_arguments(retries: int, backoff: float) -> None:
    if retries < 0:
        raise ValueError(f"retries must be 0 or more, not {retries}")
    if backoff < 0:
        raise ValueError(f"backoff must be 0 seconds or more, not {backoff}")


class Delivery:
    """The caller's on_token, counting the texts it was handed over all attempts of one call."""

    def __init__(self, on_token: OnToken) -> None:
        self.on_token = on_token
        self.count = 0

    async def __call__(self, text: str) -> None:
        # Counted before the call: once the callback has started on a text, the caller may have shown it.
        self.count += 1
        outcome = self.on_token(text)
        if inspect.isawaitable(outcome):
            await outcome


def _as_sentence(text: str) -> str:
    text = text.rstrip()
    return text if text.endswith((".", "!", "?")) else text + "."


def _retry_delay(error: InferenceError, *, attempt: int, retries: int, backoff: float, delivered: int) -> float | None:
    """Seconds to wait before the next attempt, or None when `error` is final.

    Part of a reply that reached `on_token` has been streamed to the user; starting over would show it
    twice, or a different reply after it, so such a failure is final whatever its kind.
    """
    if not error.retryable or delivered or attempt > retries:
        return None
    return backoff_delay(attempt, backoff)


def _final(error: InferenceError, *, attempt: int, delivered: int) -> None:
    """Record on `error` how the call ended, in its attributes and in words."""
    error.attempts = attempt
    error.tokens_delivered = delivered
    notes = []
    if delivered:
        notes.append(f"The reply broke off after {delivered} token{'' if delivered == 1 else 's'}.")
    if attempt > 1:
        notes.append(f"Gave up after {attempt} attempts.")
    if notes:
        error.message = " ".join([_as_sentence(error.message), *notes])
        error.args = (error.message,)


def _log_retry(error: InferenceError, attempt: int, retries: int, delay: float) -> None:
    logger.warning(
        "Inference call to %s failed (%s); retry %d of %d in %.2f s",
        error.base_url,
        type(error).__name__,
        attempt,
        retries,
        delay,
    )


async def with_retries(
    attempt: Callable[[], Awaitable[InferenceResult]],
    *,
    retries: int,
    backoff: float,
    delivery: Delivery | None = None,
) -> InferenceResult:
    """Run `attempt` until it succeeds or fails for good; the result says how many attempts it took.

    `delivery` is the streamed call's on_token (None for a reply that arrives whole). Waits with
    `asyncio.sleep`, so the loop serves other calls meanwhile.
    """
    check_retry_arguments(retries, backoff)
    number = 1
    while True:
        try:
            result = await attempt()
        except InferenceError as error:
            delivered = delivery.count if delivery is not None else 0
            delay = _retry_delay(error, attempt=number, retries=retries, backoff=backoff, delivered=delivered)
            if delay is None:
                _final(error, attempt=number, delivered=delivered)
                raise
            _log_retry(error, number, retries, delay)
            await asyncio.sleep(delay)
            number += 1
            continue
        return replace(result, attempts=number)
