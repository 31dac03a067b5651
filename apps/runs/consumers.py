"""The run page's WebSocket: pushes the same fragments the page renders, as htmx out-of-band swaps."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from asgiref.sync import async_to_sync
from channels.generic.websocket import WebsocketConsumer
from django.http import Http404
from django.template.loader import render_to_string
from django.utils.html import escape

from apps.accounts.models import User
from apps.accounts.sockets import RevocableSocketMixin
from apps.audit.denials import audit_socket_denial
from apps.runs.events import run_group
from apps.runs.models import Run
from apps.runs.selectors import run_get_for_user, run_page_context

# Close codes in the application range (4000-4999): the client should not retry.
CLOSE_NOT_FOUND = 4404


class RunConsumer(RevocableSocketMixin, WebsocketConsumer):
    """One viewer of one run. Permission is checked at connect exactly as the page checks it, and again before
    pushes (RevocableSocketMixin: at most every few seconds, and at once on sign-out or a role change).

    It tracks which attempt and how much streamed text each step's fragment shows, so token chunks that
    overlap a re-render are trimmed, and a gap or another attempt's tokens trigger a re-render instead.
    """

    socket_route = "runs:socket"

    def access_allowed(self, user: User) -> bool:
        try:
            run_get_for_user(user, run_id=self.run_id)
        except Http404:
            return False
        return True

    def connect(self) -> None:
        self.run_id = int(self.scope["url_route"]["kwargs"]["run_id"])
        if not self.access_allowed(self.scope["user"]):
            # Accept, then close with 4404: the socket's equivalent of the page's 404, the same answer for
            # a run that does not exist and one the user may not see.
            self.accept()
            audit_socket_denial(self.scope, route=self.socket_route, code=CLOSE_NOT_FOUND)
            self.close(code=CLOSE_NOT_FOUND)
            return
        # step key → (fencing token, characters of streamed text) that the viewer's page shows.
        self.shown: dict[str, tuple[int, int]] = {}
        # The diagram's step states and the run's result as the viewer's page shows them: both are sent
        # again only when they changed (the diagram is the largest fragment, the result rarely changes).
        self.shown_states: dict[str, str] | None = None
        self.shown_result: tuple[str, str] | None = None
        async_to_sync(self.channel_layer.group_add)(run_group(self.run_id), self.channel_name)
        self.revocable_join()
        self.accept()
        # Whatever happened between the page render and this connection is sent now (and only then).
        query = parse_qs(self.scope.get("query_string", b"").decode())
        self._send_fragments(None, unless_signature=(query.get("v") or [""])[0])

    def disconnect(self, code: int) -> None:
        if hasattr(self, "shown"):
            async_to_sync(self.channel_layer.group_discard)(run_group(self.run_id), self.channel_name)
            self.revocable_leave()

    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Viewers only listen; anything they send is ignored."""

    def run_changed(self, event: dict[str, Any]) -> None:
        if self.still_allowed():
            self._send_fragments(list(event.get("step_keys") or []))

    def step_tokens(self, event: dict[str, Any]) -> None:
        if not self.still_allowed():
            return
        key, offset, text = str(event["step_key"]), int(event["offset"]), str(event["text"])
        token = int(event.get("token", 0))
        shown_token, shown = self.shown.get(key, (None, None))
        if shown_token is not None and token < shown_token:
            return  # an older attempt's late chunk (fencing tokens only grow): never current again
        if shown is None or token != shown_token or offset > shown:
            # Another attempt than the one on screen, or a gap: re-render from the database.
            self._send_fragments([key])
            return
        new_text = text[shown - offset :]
        if not new_text:
            return
        self.shown[key] = (token, offset + len(text))
        self.send(text_data=f'<span id="step-{escape(key)}-stream" hx-swap-oob="beforeend">{escape(new_text)}</span>')

    def _send_fragments(self, keys: list[str] | None, *, unless_signature: str = "") -> None:
        run = Run.objects.select_related("workflow", "version", "initiator").filter(pk=self.run_id).first()
        if run is None:
            self.close(code=CLOSE_NOT_FOUND)
            return
        context = run_page_context(self.scope["user"], run)
        result = (run.status, str(run.finished_at))
        if unless_signature and unless_signature == context["signature"]:
            for step in context["steps"]:
                self.shown[step.step_key] = (step.fencing_token, len(step.streamed_text))
            self.shown_states, self.shown_result = context["diagram_states"], result
            return
        if keys is not None:
            # A tool call ("triage~2") is shown inside its agent's step: the agent's fragment is the one to send.
            keys = [key.partition("~")[0] for key in keys]
        steps = [step for step in context["steps"] if keys is None or step.step_key in keys]
        for step in steps:
            self.shown[step.step_key] = (step.fencing_token, len(step.streamed_text))
        html = str(render_to_string("runs/_run_header.html", {**context, "oob": True}))
        if result != self.shown_result:
            self.shown_result = result
            html += render_to_string("runs/_run_result.html", {**context, "oob": True})
        if context["diagram_states"] != self.shown_states:
            self.shown_states = context["diagram_states"]
            html += render_to_string("runs/_run_diagram.html", {**context, "oob": True})
        html += "".join(render_to_string("runs/_step.html", {**context, "step": step, "oob": True}) for step in steps)
        self.send(text_data=html)
