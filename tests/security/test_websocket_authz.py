"""S1 for WebSockets: every socket path the ASGI router serves must have a rule here (so a new socket without one
fails), and each persona connects to each with the objects of the analyst's team. A leak is a socket that stays
open or sends data to someone the rule says must be refused (closed with 4404 or 4401, the sockets' 404 and
sign-in answers). Re-checks after connect (logout, lost access) are tests/runs/test_websocket.py's."""

from __future__ import annotations

import asyncio

import pytest
from django.test import Client
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from apps.runs.services import run_start
from tests.security.inventory import websocket_paths
from tests.support.figures import record_figure

OPEN, REFUSED = "open", "refused"
PERSONAS = ("analyst", "reviewer", "manager", "auditor", "outsider", "anonymous")
# Socket path → persona → what she gets. A run: whoever may see it (her team, and the roles that read every run).
# The inbox: everyone signed in (her own queues). An answer's stream: the conversation's owner only; no persona
# owns the one the world names (another user's answer: tests/assistants/test_chat_streaming.py has the owner's).
RULES = {
    "ws/runs/<int:run_id>/": {**dict.fromkeys(PERSONAS[:4], OPEN), "outsider": REFUSED, "anonymous": REFUSED},
    "ws/inbox/": {**dict.fromkeys(PERSONAS[:5], OPEN), "anonymous": REFUSED},
    "ws/assistant/messages/<int:message_id>/": dict.fromkeys(PERSONAS, REFUSED),
}


def test_every_socket_path_has_a_rule():
    assert sorted(RULES) == websocket_paths(), "a WebSocket path without a rule here (or a rule for none)"


def _cookie(user) -> dict[str, str]:
    if user is None:
        return {}
    client = Client()
    client.force_login(user)
    return {"Cookie": f"sessionid={client.cookies['sessionid'].value}"}


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(300)
def test_s1_websocket_leaks(asgi_server, analyst, reviewer, manager, auditor, outsider, claims_workflow, sample_claim):
    from apps.accounts.services import team_create, user_create
    from apps.assistants.models import ChatMessage

    run, _ = run_start(actor=analyst, workflow=claims_workflow, inputs={"claim_text": sample_claim})
    # Another user's conversation answer, as a message row pointing at a run (what the consumer checks).
    fay = user_create(username="fay-ws", password="a-long-enough-password", roles=["analyst"])
    team_create(name="Fay's team", members=[fay])
    answer = ChatMessage.objects.filter(role=ChatMessage.Role.ASSISTANT, run__isnull=False).first()
    message_id = answer.pk if answer is not None else 999_999
    users = {"analyst": analyst, "reviewer": reviewer, "manager": manager, "auditor": auditor, "outsider": outsider}
    headers = {persona: _cookie(users.get(persona)) for persona in PERSONAS}
    socket_base = asgi_server.replace("http://", "ws://")

    async def attempt(path: str, persona: str) -> str:
        url = socket_base + "/" + path.replace("<int:run_id>", str(run.pk)).replace("<int:message_id>", str(message_id))
        async with connect(url, origin=asgi_server, additional_headers=headers[persona], open_timeout=10) as socket:
            try:
                await asyncio.wait_for(socket.recv(), 3)
                return OPEN  # it sent data
            except ConnectionClosed as closed:
                return REFUSED if closed.rcvd is not None and closed.rcvd.code in (4401, 4403, 4404) else OPEN
            except TimeoutError:
                return OPEN  # still open and subscribed

    async def sweep() -> dict[tuple[str, str], str]:
        return {(path, persona): await attempt(path, persona) for path in RULES for persona in PERSONAS}

    outcomes = asyncio.run(sweep())
    leaks = [
        f"{persona} {path}"
        for (path, persona), got in outcomes.items()
        if got == OPEN and RULES[path][persona] == REFUSED
    ]
    wrong = {key: got for key, got in outcomes.items() if got != RULES[key[0]][key[1]]}
    record_figure(f"S1 websocket leaks {len(leaks)} of {len(outcomes)} {'ok' if not leaks else 'FAILED'}")
    assert not leaks, leaks
    assert not wrong, f"sockets that differ from the rules: {wrong}"
