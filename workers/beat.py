"""Beat's single-instance rule: however many beat processes run, one sends the schedule; the others stand by.

Two beats sending the same schedule double every periodic task. The tasks survive that (each claims its rows by
a conditional update), but the sweeper, the anchors and the digests would run twice as often as configured, and a
deployment cannot promise "exactly one beat" anyway: a rolling update, a second host, a stray container.

So each beat holds a lease in Redis before it sends anything: a key naming its holder, with a time to live of
AIOS_BEAT_LEASE_SECONDS. The holder renews it at every tick (ticks are at most a third of the lease apart); a
beat that finds the key held by another sends nothing, keeps its own schedule's cadence (its entries are
reserved as if sent, so it does not fire a backlog when it takes over), and tries again at its next tick. When
the holder dies its key expires, and a standing-by beat takes over within one lease and one tick. A beat that
stops cleanly deletes its key, so the next one takes over at its next tick.

Redis keeps the time (PX expiry on the server), so the hosts' clocks do not matter. A holder that cannot reach
Redis cannot renew: it stops sending at once (its key expires there anyway; the broker is unreachable too). The
one overlap left is a holder frozen for longer than the lease between its renewal and its send (a stopped VM):
then one tick may be sent twice, which every periodic task tolerates.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from typing import Any

import redis
from celery.beat import PersistentScheduler, ScheduleEntry

logger = logging.getLogger(__name__)

LEASE_KEY = "aios:beat:leader"

# Take the key when it is free or ours, and (re)set its expiry; one round trip, atomic on the server.
_HOLD = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


class BeatLease:
    """The lease one beat must hold to send the schedule: `hold()` takes or renews it, `release()` gives it up.

    The holder's token is `<host>:<pid>:<random>`, so an operator (and a test) can see which beat leads with
    `GET aios:beat:leader`.
    """

    def __init__(self, client: redis.Redis, seconds: float, *, key: str = LEASE_KEY) -> None:
        self.client = client
        self.key = key
        self.milliseconds = max(1, round(seconds * 1000))
        self.token = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(6)}"
        self._hold = client.register_script(_HOLD)
        self._release = client.register_script(_RELEASE)

    def hold(self) -> bool:
        """True when this beat holds the lease for the next `seconds` (taken now or renewed); False when another
        beat holds it or Redis cannot be reached (no send without a lease)."""
        try:
            return bool(self._hold(keys=[self.key], args=[self.token, self.milliseconds]))
        except redis.RedisError as error:
            logger.warning("beat: cannot reach Redis to hold the beat lease (%s); sending nothing", error)
            return False

    def release(self) -> None:
        """Give the lease up if this beat holds it, so a standing-by beat takes over at its next tick."""
        try:
            self._release(keys=[self.key], args=[self.token])
        except redis.RedisError as error:
            logger.warning("beat: could not release the beat lease (%s); it expires by itself", error)


class SingleBeatScheduler(PersistentScheduler):
    """Celery's persistent scheduler that sends only while it holds the beat lease (see the module docstring).

    Configured as the app's beat_scheduler (workers/celery.py), so `celery beat` with no option uses it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from django.conf import settings

        self.lease_seconds = float(settings.AIOS_BEAT_LEASE_SECONDS)
        self.lease = BeatLease(
            redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=5),
            self.lease_seconds,
        )
        self.leading = False
        super().__init__(*args, **kwargs)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """One pass of Celery's scheduler, after taking or renewing the lease; never sleeps past a third of the
        lease, so a holder renews in time and a standing-by beat notices a free lease soon."""
        leading = self.lease.hold()
        if leading != self.leading:
            if leading:
                logger.info("beat: this beat holds the beat lease (%s) and sends the schedule", self.lease.token)
            else:
                logger.info("beat: another beat holds the beat lease; standing by")
            self.leading = leading
        interval = float(super().tick(*args, **kwargs))
        return min(interval, self.lease_seconds / 3)

    def apply_entry(self, entry: ScheduleEntry, producer: Any = None) -> None:
        # Called by tick() for each due entry after reserving its next run: a beat standing by keeps the cadence
        # but sends nothing.
        if not self.leading:
            logger.debug("beat: not sending %s: another beat holds the lease", entry.name)
            return
        super().apply_entry(entry, producer=producer)

    def close(self) -> None:
        if self.leading:
            self.lease.release()
            self.leading = False
        super().close()
