"""The inbox's WebSocket: tells a reviewer that items arrived in her queues, as the "N new items" bar (an htmx
out-of-band swap of the fragment the page polls for without it). The list itself is never reflowed."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from asgiref.sync import async_to_sync
from channels.generic.websocket import WebsocketConsumer
from django.template.loader import render_to_string

from apps.accounts.models import User
from apps.accounts.sockets import RevocableSocketMixin
from apps.approvals.events import inbox_group
from apps.approvals.selectors import new_items_since, queues_worked_by

CLOSE_SIGN_IN = 4401


class InboxConsumer(RevocableSocketMixin, WebsocketConsumer):
    """One reviewer's inbox page. It listens to the queues she works, as they are when she connects; before
    each push it checks that she is still signed in and active (RevocableSocketMixin), and the count it
    pushes is computed for her as she is then (`new_items_since` applies her current rights)."""

    socket_route = "approvals:inbox-socket"

    def access_allowed(self, user: User) -> bool:
        return True  # nothing object-specific: what she sees is filtered per push

    def connect(self) -> None:
        user = self.scope["user"]
        if not user.is_authenticated:
            self.accept()
            self.close(code=CLOSE_SIGN_IN)
            return
        query = parse_qs(self.scope.get("query_string", b"").decode())
        try:
            self.after = int((query.get("after") or ["0"])[0])
        except ValueError:
            self.after = 0
        self.reload = (query.get("q") or [""])[0][:1000]
        self.groups_joined = [inbox_group(pk) for pk in queues_worked_by(user).values_list("pk", flat=True)]
        for group in self.groups_joined:
            async_to_sync(self.channel_layer.group_add)(group, self.channel_name)
        self.revocable_join()
        self.accept()
        self._send_bar()  # whatever arrived between the page render and this connection

    def disconnect(self, code: int) -> None:
        for group in getattr(self, "groups_joined", []):
            async_to_sync(self.channel_layer.group_discard)(group, self.channel_name)
        if hasattr(self, "groups_joined"):
            self.revocable_leave()

    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """The page only listens."""

    def inbox_item(self, event: dict[str, Any]) -> None:
        if self.still_allowed():
            self._send_bar()

    def _send_bar(self) -> None:
        count = new_items_since(self.scope["user"], self.after)
        self.send(
            text_data=render_to_string(
                "approvals/_new_items.html", {"count": count, "reload": self.reload, "oob": True}
            )
        )
