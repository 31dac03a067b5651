"""Telling browsers about runs: "something changed" doorbells and coalesced token chunks.

Messages never carry the truth themselves: a change message makes the consumer re-render fragments from
the database, and token chunks carry their offset so a consumer can drop what it already showed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import weakref
from collections.abc import Awaitable
from typing import Any

import redis
import redis.asyncio as aioredis
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import DatabaseError

from apps.core.database import connection_refresh, db_call
from apps.runs.models import StepRun

logger = logging.getLogger(__name__)


def run_group(run_id: int) -> str:
    """The channel-layer group every viewer of the run joins."""
    return f"run.{run_id}"


_publisher: tuple[str, str] | None = None
_sync_client: redis.Redis | None = None
# redis.asyncio connections belong to the event loop that opened them: one client per loop, forgotten with it.
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = weakref.WeakKeyDictionary()


def _pubsub_target() -> tuple[str, str] | None:
    """(prefix, Redis URL) when the channel layer is RedisPubSubChannelLayer on a single Redis, else None.

    Then a group message is one PUBLISH of the layer's serialised message on "<prefix>__group__<group>" (the
    layer's own naming, checked end to end by the WebSocket tests), which a plain client can send: workers are
    synchronous, and going through async_to_sync would cost a new event loop and connection per message,
    several times a second per running step.
    """
    global _publisher
    if _publisher is None:
        config: dict[str, Any] = dict(settings.CHANNEL_LAYERS["default"])
        hosts = config.get("CONFIG", {}).get("hosts", [])
        if (
            not config["BACKEND"].endswith("RedisPubSubChannelLayer")
            or len(hosts) != 1
            or not isinstance(hosts[0], str)
        ):
            return None
        _publisher = (config.get("CONFIG", {}).get("prefix", "asgi"), hosts[0])
    return _publisher


_sending: set[asyncio.Task[None]] = set()


def _send(run_id: int, message: dict[str, object]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        target = _pubsub_target()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:
            if target is None:
                async_to_sync(layer.group_send)(run_group(run_id), message)
                return
            global _sync_client
            if _sync_client is None:
                _sync_client = redis.Redis.from_url(target[1], socket_timeout=2, socket_connect_timeout=2)
            _sync_client.publish(f"{target[0]}__group__{run_group(run_id)}", layer.serialize(message))
            return
        # On an event loop (an asynchronous step's tokens): sent by a task, never waited for, so a slow Redis
        # never holds up the loop's other steps.
        if target is None:
            sending = layer.group_send(run_group(run_id), message)
        else:
            client = _async_clients.get(loop)
            if client is None:
                client = aioredis.Redis.from_url(target[1], socket_timeout=2, socket_connect_timeout=2)
                _async_clients[loop] = client
            sending = client.publish(f"{target[0]}__group__{run_group(run_id)}", layer.serialize(message))
        task = loop.create_task(_courtesy(run_id, sending))
        _sending.add(task)  # a task nothing refers to may be collected before it ran
        task.add_done_callback(_sending.discard)
    except Exception:
        # Live updates are a courtesy: the page shows the truth on reload, so a broken channel layer must
        # never fail a step or roll back a result.
        logger.warning("could not publish an update for run %s", run_id, exc_info=True)


async def _courtesy(run_id: int, sending: Awaitable[Any]) -> None:
    try:
        await sending
    except Exception:
        logger.warning("could not publish an update for run %s", run_id, exc_info=True)


def publish_run_changed(run_id: int, step_keys: list[str]) -> None:
    """Tell viewers that the run and the named steps changed (call after commit)."""
    _send(run_id, {"type": "run.changed", "run_id": run_id, "step_keys": step_keys})


class TokenStream:
    """Collects a step's streamed tokens and flushes them to viewers a few times per second.

    The partial text is also written to the step's row, so that a page loaded mid-stream shows it, but at
    most once per AIOS_TOKEN_PERSIST_SECONDS (and with the step's result at the end): a write per flush
    was the largest database cost of a streaming step. Each message carries the text since the last
    write, with that write's length as its offset, so a viewer who rendered the row at any moment can
    append from where it is, without a gap. The write is fenced: once the step is no longer this worker's
    (taken over, cancelled, timed out), nothing more is published. Between writes a stale worker's chunks
    still carry its old fencing token, which a viewer of the newer attempt refuses (it re-renders)."""

    def __init__(
        self, step_run: StepRun, *, interval: float | None = None, persist_interval: float | None = None
    ) -> None:
        self.step_run = step_run
        self.interval = settings.AIOS_TOKEN_FLUSH_SECONDS if interval is None else interval
        self.persist_interval = settings.AIOS_TOKEN_PERSIST_SECONDS if persist_interval is None else persist_interval
        self.text = ""
        self._published_length = 0
        self._persisted_length = 0
        self._lost = False
        # The first tokens go out, and are written, at once: time to first token is what a viewer notices.
        self._last_flush = -math.inf
        self._last_persist = -math.inf
        self._writing: asyncio.Task[bool] | None = None

    def add(self, token: str) -> None:
        """Append a token; flush when the interval has passed.

        Called on an event loop (an asynchronous step's model call), it never blocks the loop on the database:
        the message goes out at once and the row is written on a database thread, one write at a time."""
        self.text += token
        if time.monotonic() - self._last_flush < self.interval:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        now = time.monotonic()
        self._last_flush = now
        if self._lost or len(self.text) == self._published_length:
            return
        offset = self._persisted_length
        if now - self._last_persist >= self.persist_interval and (self._writing is None or self._writing.done()):
            self._last_persist = now
            self._writing = loop.create_task(db_call(self._persist, self.text))
        self._publish(offset)

    def flush(self) -> None:
        """Publish whatever arrived since the last flush, writing the row first when that is due."""
        now = time.monotonic()
        self._last_flush = now
        if self._lost or len(self.text) == self._published_length:
            return
        offset = self._persisted_length
        if now - self._last_persist >= self.persist_interval:
            self._last_persist = now
            if not self._persist(self.text):
                return
        self._publish(offset)

    def _persist(self, text: str) -> bool:
        """Write the text so far to the row while the step is still this worker's; False once it is not."""
        try:
            still_ours = StepRun.objects.filter(
                pk=self.step_run.pk, state=StepRun.State.RUNNING, fencing_token=self.step_run.fencing_token
            ).update(streamed_text=text)
        except DatabaseError:
            # The database is away (a restart): the partial text is a courtesy to viewers, never a reason to
            # fail the step. The next write, or the result, catches up; the message still goes.
            logger.warning("could not save the streamed text of step run %s", self.step_run.pk, exc_info=True)
            connection_refresh()
            return True
        if not still_ours:
            self._lost = True  # viewers must not see this attempt's tokens any more
            return False
        self._persisted_length = max(self._persisted_length, len(text))
        return True

    def _publish(self, offset: int) -> None:
        if self._lost:
            return
        self._published_length = len(self.text)
        _send(
            self.step_run.run_id,
            {
                "type": "step.tokens",
                "step_key": self.step_run.step_key,
                "token": self.step_run.fencing_token,
                "offset": offset,
                "text": self.text[offset:],
            },
        )
