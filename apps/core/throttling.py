"""Consumption limits: DRF throttles per user and address, and counters for limits that are not per request
(run starts, drafts from a description, a webhook's refusals). Counted in the shared Redis cache, so every web
process sees the same numbers."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import cast

import redis
from django.conf import settings
from django.core.cache import cache
from rest_framework.throttling import AnonRateThrottle, UserRateThrottle

from apps.core.exceptions import RateLimited
from apps.core.telemetry.store import telemetry_redis

logger = logging.getLogger(__name__)


class PerUserThrottle(UserRateThrottle):
    """API calls per signed-in user per minute (settings.AIOS_API_REQUESTS_PER_MINUTE), counted in the shared
    Redis cache so every web process sees the same count. Read at each request, not at import, so a changed
    setting applies without a restart of the class."""

    def get_rate(self) -> str:
        return f"{settings.AIOS_API_REQUESTS_PER_MINUTE}/min"


class PerAddressAnonThrottle(AnonRateThrottle):
    """API calls per minute from one address without a user (settings.AIOS_API_ANON_REQUESTS_PER_MINUTE)."""

    def get_rate(self) -> str:
        return f"{settings.AIOS_API_ANON_REQUESTS_PER_MINUTE}/min"


def rate_count(*, scope: str, key: str, period: int, now: float | None = None, keep: int = 5) -> tuple[int, int]:
    """Count one event of `scope` for `key` in the current fixed window of `period` seconds; returns (the events
    counted in that window so far, this one included; the window's start). `keep` is how many seconds the count
    stays readable after the window ends (`rate_count_read`). Without the cache the count is 0 (logged by the
    cache client): a limiter must not take the product down."""
    clock = int(time.time() if now is None else now)
    window = clock - clock % period
    cache_key = _count_key(scope, key, window)
    try:
        cache.add(cache_key, 0, timeout=period + keep)
        return int(cache.incr(cache_key)), window
    except Exception:
        return 0, window


def rate_count_read(*, scope: str, key: str, window: int) -> int | None:
    """The count `rate_count` reached in `window`, or None when it is gone (expired, or the cache is down)."""
    try:
        value = cache.get(_count_key(scope, key, window))
    except Exception:
        return None
    return None if value is None else int(value)


def _count_key(scope: str, key: str, window: int) -> str:
    return f"aios:rate:{scope}:{key}:{window}"


def rate_limit_wait(*, scope: str, key: str, limit: int, period: int) -> int:
    """Count one event of `scope` for `key` in the current window of `period` seconds; 0 when it is within
    `limit`, else the seconds until the window ends (for Retry-After). Fixed windows in the shared cache:
    cheap (one INCR), and an edge burst of twice the limit is acceptable for a consumption guard. Without the
    cache the event is allowed: a limiter must not take the product down."""
    now = int(time.time())
    count, window = rate_count(scope=scope, key=key, period=period, now=now)
    return 0 if count <= limit else max(1, window + period - now)


def rate_limit_check(*, scope: str, key: str, limit: int, refusal: Callable[[int], str], period: int = 60) -> None:
    """Count one event (`rate_limit_wait`) and refuse it with RateLimited (429, Retry-After) past `limit`, in the
    words `refusal(seconds to wait)` gives; a limit of 0 or less counts nothing and refuses nothing."""
    if limit <= 0:
        return
    wait = rate_limit_wait(scope=scope, key=key, limit=limit, period=period)
    if wait:
        raise RateLimited(refusal(wait), retry_after=wait)


# --- events past a limit, summed up once their window has ended ----------------------------------------------
# A limit that stops recording events (a webhook's refusals) must still say how many it did not record. The
# first event past the limit notes its window in a sorted set of the shared Redis, scored by when the window
# ends; the sweeper takes the windows that have ended and records one summary for each.


def _overflow_set(scope: str) -> str:
    return cache.make_key(f"rate-overflow:{scope}")


def rate_overflow_note(*, scope: str, member: str, due: float) -> None:
    """Remember that `member` (a key and its window, as the caller spells them) went past its limit, to be
    summed up from `due` on. Logged and dropped without Redis: only the summary is lost."""
    try:
        telemetry_redis().zadd(_overflow_set(scope), {member: due})
    except redis.RedisError:
        logger.warning("rate limit %s: could not note %s for its summary", scope, member, exc_info=True)


def rate_overflows_take(*, scope: str, now: float, batch: int = 100) -> list[str]:
    """The members noted under `scope` whose windows have ended by `now`, each removed from the set by this
    caller (a ZREM that answers 1), so two concurrent sweepers never sum up the same window twice."""
    try:
        client = telemetry_redis()
        due = cast(list[str], client.zrangebyscore(_overflow_set(scope), "-inf", now, start=0, num=batch))
        return [member for member in due if client.zrem(_overflow_set(scope), member)]
    except redis.RedisError:
        logger.warning("rate limit %s: could not read the windows to sum up", scope, exc_info=True)
        return []
