"""A chat answer streams over a real WebSocket (uvicorn, the Redis channel layer, a Celery worker process and a
scripted development server streaming slowly): token chunks reach the conversation's socket before the final
answer replaces them, and nobody but the conversation's owner may subscribe."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from apps.assistants.chat_services import chat_message_send, chat_session_start
from apps.inference.models import ModelEndpoint
from tests.assistants.test_chat import chat_workflow
from tests.support.devserver import scripted_server

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

ANSWER = (
    "Two items wait for you: the water damage claim A-17 and the stolen bike claim B-4, both in the adjusters' "
    "queue, the oldest first."
)
RULES: list[dict[str, Any]] = [
    {"match": {"contains": ["CHAT-LIST", "ITEMS-LISTED"]}, "response": ANSWER},
    {"match": {"contains": "CHAT-LIST"}, "response": {"tool_calls": [{"name": "my_items", "arguments": {}}]}},
]


@pytest.fixture
def slow_endpoint(transactional_db: Any) -> Iterator[ModelEndpoint]:
    with scripted_server(RULES, ttft_ms=200, tpot_ms=40) as url:
        yield ModelEndpoint.objects.create(
            name="main", kind="openai-compatible", url=url, is_default=True, price_input_per_1k=Decimal("0.5")
        )


def cookie(user: Any) -> str:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


def test_the_answer_streams_to_its_owner_and_is_replaced_by_the_final_text(
    asgi_server, celery_worker_process, slow_endpoint, analyst, reviewer, team
):
    _, trigger = chat_workflow(analyst, team)
    session = chat_session_start(actor=reviewer, trigger=trigger)
    answer = chat_message_send(actor=reviewer, session=session, text="CHAT-LIST what is waiting for me?")
    url = asgi_server.replace("http://", "ws://") + f"/ws/assistant/messages/{answer.pk}/"

    headers = {"Cookie": cookie(reviewer)}

    async def watch() -> list[str]:
        received: list[str] = []
        async with connect(url, origin=asgi_server, additional_headers=headers) as socket:
            async with asyncio.timeout(60):
                while not any("chat-message--answered" in m for m in received):
                    received.append(str(await socket.recv()))
        return received

    received = asyncio.run(watch())
    final_at = next(i for i, m in enumerate(received) if "chat-message--answered" in m)
    chunks = [
        m for m in received[:final_at] if m.startswith(f'<span id="chat-stream-{answer.pk}" hx-swap-oob="beforeend">')
    ]
    streamed = "".join(re.sub(r"<[^>]+>", "", chunk) for chunk in chunks)
    # Several chunks arrived before the final answer, and the answer's start arrived as tokens.
    assert len(chunks) >= 2, received
    assert "Two items wait for you" in streamed.replace("&#x27;", "'")
    final = received[final_at]
    assert f'id="chat-message-{answer.pk}"' in final and 'hx-swap-oob="true"' in final
    assert "the stolen bike claim B-4" in final.replace("&#x27;", "'") and "Claim A-17 water damage" in final
    answer.refresh_from_db()
    assert answer.text == ANSWER


def test_only_the_owner_may_subscribe(asgi_server, analyst, reviewer, admin_user_role, team):
    _, trigger = chat_workflow(analyst, team)
    session = chat_session_start(actor=reviewer, trigger=trigger)
    answer = chat_message_send(actor=reviewer, session=session, text="hello")
    url = asgi_server.replace("http://", "ws://") + f"/ws/assistant/messages/{answer.pk}/"

    async def close_code(session_cookie: str) -> int | None:
        async with connect(url, origin=asgi_server, additional_headers={"Cookie": session_cookie}) as socket:
            try:
                while True:
                    await asyncio.wait_for(socket.recv(), 10)
            except ConnectionClosed as closed:
                return closed.rcvd.code if closed.rcvd else None
        return None

    # The analyst may view the run (her workflow) but the conversation is not hers; nor the admin's.
    assert asyncio.run(close_code(cookie(analyst))) == 4404
    assert asyncio.run(close_code(cookie(admin_user_role))) == 4404
