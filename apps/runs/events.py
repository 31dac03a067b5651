"""Telling browsers about runs: "something changed" doorbells and coalesced token chunks.

Messages never carry the truth themselves: a change message makes the consumer re-render fragments from
the database, and token chunks carry their offset so a consumer can drop what it already showed.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import redis
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings

from apps.runs.models import StepRun

logger = logging.getLogger(__name__)


def run_group(run_id: int) -> str:
    """The channel-layer group every viewer of the run joins."""
    return f"run.{run_id}"


_publisher: tuple[str, redis.Redis] | None = None


def _sync_publisher() -> tuple[str, redis.Redis] | None:
    """A plain Redis client that publishes the way RedisPubSubChannelLayer.group_send does.

    Workers are synchronous: going through async_to_sync costs a new event loop and connection per
    message, several times a second per running step. With the pub/sub layer on a single Redis, a group
    message is one PUBLISH of the layer's serialised message on "<prefix>__group__<group>" (the layer's
    own naming, checked end to end by the WebSocket tests).
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
        prefix = config.get("CONFIG", {}).get("prefix", "asgi")
        _publisher = (prefix, redis.Redis.from_url(hosts[0], socket_timeout=2, socket_connect_timeout=2))
    return _publisher


def _send(run_id: int, message: dict[str, object]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        publisher = _sync_publisher()
        if publisher is not None:
            prefix, client = publisher
            client.publish(f"{prefix}__group__{run_group(run_id)}", layer.serialize(message))
        else:
            async_to_sync(layer.group_send)(run_group(run_id), message)
    except Exception:
        # Live updates are a courtesy: the page shows the truth on reload, so a broken channel layer must
        # never fail a step or roll back a result.
        logger.warning("could not publish an update for run %s", run_id, exc_info=True)


def publish_run_changed(run_id: int, step_keys: list[str]) -> None:
    """Tell viewers that the run and the named steps changed (call after commit)."""
    _send(run_id, {"type": "run.changed", "run_id": run_id, "step_keys": step_keys})


class TokenStream:
    """Collects a step's streamed tokens and flushes them a few times per second: to the database (so a
    reload shows them) and then to viewers. Writes are fenced, so a stale worker cannot overwrite."""

    def __init__(self, step_run: StepRun, *, interval: float | None = None) -> None:
        self.step_run = step_run
        self.interval = settings.AIOS_TOKEN_FLUSH_SECONDS if interval is None else interval
        self.text = ""
        self._flushed_length = 0
        # The first tokens go out at once (time to first token is what a viewer notices); later ones are
        # coalesced to one message per interval.
        self._last_flush = -math.inf

    def add(self, token: str) -> None:
        """Append a token; flush when the interval has passed."""
        self.text += token
        if time.monotonic() - self._last_flush >= self.interval:
            self.flush()

    def flush(self) -> None:
        """Persist and publish whatever arrived since the last flush."""
        self._last_flush = time.monotonic()
        if len(self.text) == self._flushed_length:
            return
        offset, chunk = self._flushed_length, self.text[self._flushed_length :]
        still_ours = StepRun.objects.filter(
            pk=self.step_run.pk, state=StepRun.State.RUNNING, fencing_token=self.step_run.fencing_token
        ).update(streamed_text=self.text)
        self._flushed_length = len(self.text)
        if not still_ours:
            return  # the step was taken over, cancelled or timed out: viewers must not see these tokens
        _send(
            self.step_run.run_id,
            {
                "type": "step.tokens",
                "step_key": self.step_run.step_key,
                "token": self.step_run.fencing_token,
                "offset": offset,
                "text": chunk,
            },
        )
