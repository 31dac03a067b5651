"""A chat answer's WebSocket: the answer being written streams token by token, and the whole answer is pushed
again (its tools, a call waiting for confirmation, the final text) whenever its run changes.

It listens to the run's own group (apps/runs/events.py), the one the run page's viewers join; only the owner of
the conversation may subscribe, and only while she may still view the run."""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync
from channels.generic.websocket import WebsocketConsumer
from django.http import Http404
from django.template.loader import render_to_string
from django.utils.html import escape

from apps.accounts.models import User
from apps.accounts.sockets import RevocableSocketMixin
from apps.assistants.chat_selectors import chat_answer, chat_message_get_for_user
from apps.assistants.models import ChatMessage
from apps.audit.denials import audit_socket_denial
from apps.runs.events import run_group
from apps.runs.selectors import run_get_for_user

# The run page's close code for "no such thing, do not retry".
CLOSE_NOT_FOUND = 4404


class ChatAnswerConsumer(RevocableSocketMixin, WebsocketConsumer):
    """One open conversation page's view of one answer. Permission is checked at connect, as the page checks it,
    and again before pushes (RevocableSocketMixin)."""

    socket_route = "assistants:answer-socket"

    def access_allowed(self, user: User) -> bool:
        try:
            message = chat_message_get_for_user(user, message_id=self.message_id)
            if message.role != ChatMessage.Role.ASSISTANT or message.run_id is None:
                raise Http404
            run_get_for_user(user, run_id=message.run_id)
        except Http404:
            return False
        self.run_id = message.run_id
        return True

    def connect(self) -> None:
        self.message_id = int(self.scope["url_route"]["kwargs"]["message_id"])
        if not self.access_allowed(self.scope["user"]):
            self.accept()
            audit_socket_denial(self.scope, route=self.socket_route, code=CLOSE_NOT_FOUND)
            self.close(code=CLOSE_NOT_FOUND)
            return
        # The streaming step's (fencing token, characters of streamed text) the viewer's page shows.
        self.shown: tuple[int, int] | None = None
        self.stream_key = ""
        async_to_sync(self.channel_layer.group_add)(run_group(self.run_id), self.channel_name)
        self.revocable_join()
        self.accept()
        # Whatever happened between the page's render and this connection.
        self._send_answer()

    def disconnect(self, code: int) -> None:
        if hasattr(self, "run_id"):
            async_to_sync(self.channel_layer.group_discard)(run_group(self.run_id), self.channel_name)
            self.revocable_leave()

    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """The page only listens."""

    def run_changed(self, event: dict[str, Any]) -> None:
        if self.still_allowed():
            self._send_answer()

    def step_tokens(self, event: dict[str, Any]) -> None:
        if not self.still_allowed():
            return
        key, offset, text = str(event["step_key"]), int(event["offset"]), str(event["text"])
        token = int(event.get("token", 0))
        if self.stream_key and key != self.stream_key:
            return  # another step's tokens (a tool's own model call): not the answer
        if self.shown is not None and token < self.shown[0]:
            return  # an older attempt's late chunk
        if self.shown is None or token != self.shown[0] or offset > self.shown[1]:
            self._send_answer()  # another turn or a gap: render from the database
            return
        new_text = text[self.shown[1] - offset :]
        if not new_text:
            return
        self.shown = (token, offset + len(text))
        self.send(
            text_data=f'<span id="chat-stream-{self.message_id}" hx-swap-oob="beforeend">{escape(new_text)}</span>'
        )

    def _send_answer(self) -> None:
        message = ChatMessage.objects.select_related("run", "session").filter(pk=self.message_id).first()
        if message is None or message.run is None:
            self.close(code=CLOSE_NOT_FOUND)
            return
        answer = chat_answer(message)
        self.stream_key = answer.stream_key
        self.shown = (answer.fencing_token, len(answer.streamed_text)) if answer.stream_key else None
        self.send(text_data=render_to_string("assistants/chat_answer.html", {"answer": answer, "oob": True}))
