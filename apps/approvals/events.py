"""Live inbox updates: when an item lands in a queue, the inboxes of the people who work that queue hear of it
(after commit) and show a "N new items" bar. A lost message costs nothing: the bar is a courtesy, the list on
reload is the truth."""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

logger = logging.getLogger(__name__)


def inbox_group(queue_id: int) -> str:
    return f"inbox-queue-{queue_id}"


def publish_item_arrived(queue_id: int, item_id: int) -> None:
    """Tell the inboxes watching `queue_id` that item `item_id` arrived (call after commit)."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(inbox_group(queue_id), {"type": "inbox.item", "item": item_id})
    except Exception:
        logger.warning("could not announce item %s to queue %s", item_id, queue_id, exc_info=True)
