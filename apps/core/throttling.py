"""Consumption limits: DRF throttles per user and address, and a counter for limits that are not per request
(run starts). Counted in the shared Redis cache, so every web process sees the same numbers."""

from __future__ import annotations

import time

from django.conf import settings
from django.core.cache import cache
from rest_framework.throttling import AnonRateThrottle, UserRateThrottle


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


def rate_limit_wait(*, scope: str, key: str, limit: int, period: int) -> int:
    """Count one event of `scope` for `key` in the current window of `period` seconds; 0 when it is within
    `limit`, else the seconds until the window ends (for Retry-After). Fixed windows in the shared cache:
    cheap (one INCR), and an edge burst of twice the limit is acceptable for a consumption guard. Without the
    cache the event is allowed (logged by the cache client): a limiter must not take the product down."""
    now = int(time.time())
    window = now - now % period
    cache_key = f"aios:rate:{scope}:{key}:{window}"
    try:
        cache.add(cache_key, 0, timeout=period + 5)
        count = int(cache.incr(cache_key))
    except Exception:
        return 0
    return 0 if count <= limit else max(1, window + period - now)
