"""Per-endpoint in-flight limits that hold across every worker process: a lease semaphore in Redis.

Each call takes a slot, a member of a sorted set scored by its lease expiry, and gives it back when it
ends. A worker killed mid-call cannot give its slot back; the lease (renewed while the call runs) lets it
lapse instead, so a crash costs capacity for at most one lease, never forever. Taking a slot is one
atomic script: drop lapsed leases, count, add if below the limit. Every time is Redis's own clock, so
workers whose clocks disagree cannot evict each other's live leases.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
import weakref
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from django.conf import settings
from redis.exceptions import RedisError

from apps.inference.errors import InferenceOverloadedError, InferenceUnavailableError

logger = logging.getLogger(__name__)

LEASE_SECONDS = 60.0
_RENEW_SECONDS = LEASE_SECONDS / 3

# KEYS[1] the endpoint's set; ARGV: lease seconds, limit, member. Returns 1 when the slot was taken.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[3])
    redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[1])) * 2)
    return 1
end
return 0
"""

# KEYS[1] the set; ARGV: lease seconds, member. Returns 0 when the lease had already lapsed and was dropped.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
return redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[1]), ARGV[2])
"""

# KEYS[1] the set. Slots whose lease has not lapsed.
_COUNT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
return redis.call('ZCOUNT', KEYS[1], now, '+inf')
"""

# redis.asyncio connections belong to the event loop that opened them: one client per loop, forgotten with it.
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = weakref.WeakKeyDictionary()


def _redis() -> aioredis.Redis:
    loop = asyncio.get_running_loop()
    found = _clients.get(loop)
    if found is None:
        found = aioredis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=5)
        _clients[loop] = found
    return found


def _key(endpoint_name: str) -> str:
    return f"aios:inference:in-flight:{endpoint_name}"


def _unavailable(endpoint_name: str, error: RedisError) -> InferenceUnavailableError:
    return InferenceUnavailableError(
        f'The request slots of model endpoint "{endpoint_name}" could not be counted (Redis: {error}); '
        "the call will be retried.",
        base_url=endpoint_name,
    )


@contextlib.asynccontextmanager
async def in_flight_slot(endpoint_name: str, limit: int, *, wait_seconds: float) -> AsyncIterator[float]:
    """Hold one of `limit` slots of `endpoint_name` for the duration of the block; yields the seconds
    spent waiting for it. Raises InferenceOverloadedError after `wait_seconds` without a free slot, and
    InferenceUnavailableError (retryable) when Redis cannot be reached to take one."""
    redis = _redis()
    key, member = _key(endpoint_name), uuid.uuid4().hex
    started = time.monotonic()
    pause = 0.002
    try:
        while not await redis.register_script(_ACQUIRE)(keys=[key], args=[LEASE_SECONDS, limit, member]):
            if time.monotonic() - started > wait_seconds:
                raise InferenceOverloadedError(
                    f'Every one of the {limit} request slots of model endpoint "{endpoint_name}" stayed busy for '
                    f"{wait_seconds:g} seconds; the step will be retried.",
                    base_url=endpoint_name,
                )
            # Short first pauses keep the added latency small when a slot frees quickly; the cap keeps a
            # long queue of waiters from hammering Redis.
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)
    except RedisError as error:
        raise _unavailable(endpoint_name, error) from error
    waited = time.monotonic() - started

    async def renew() -> None:
        while True:
            await asyncio.sleep(_RENEW_SECONDS)
            try:
                if not await redis.register_script(_RENEW)(keys=[key], args=[LEASE_SECONDS, member]):
                    logger.warning("in-flight lease of %s lapsed during a call; the limit may be exceeded", key)
            except RedisError:
                logger.warning("could not renew an in-flight lease of %s", key, exc_info=True)

    renewer = asyncio.create_task(renew())
    try:
        yield waited
    finally:
        renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewer
        # A slot that cannot be given back lapses with its lease: never let that replace the call's outcome.
        try:
            await redis.zrem(key, member)
        except RedisError:
            logger.warning("could not release an in-flight slot of %s; it lapses in %ss", key, LEASE_SECONDS)


async def in_flight_count(endpoint_name: str) -> int:
    """Slots currently held (leases not yet lapsed), for tests and the endpoints page."""
    return int(await _redis().register_script(_COUNT)(keys=[_key(endpoint_name)]))
