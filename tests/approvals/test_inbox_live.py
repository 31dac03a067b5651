"""The inbox's WebSocket against the real ASGI server and Redis channel layer: a reviewer's open inbox hears
of items arriving in her queues as the "N new items" bar, and nothing of queues she does not work."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from django.test import Client
from websockets.asyncio.client import ClientConnection, connect

from apps.accounts.services import team_create, user_create
from apps.runs.services import run_start
from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish
from tests.conftest import PASSWORD
from tests.support.engine import drive

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

SCHEMA = {"type": "object", "properties": {}}


def session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


def approval_workflow(analyst, team, name: str):
    workflow = workflow_create(actor=analyst, name=name, team=team)
    graph = {"steps": [{"key": "ok", "type": "human.approval", "config": {"queue": team.group.name}}]}
    version = workflow_version_create(actor=analyst, workflow=workflow, graph=graph, input_schema=SCHEMA)
    workflow_version_publish(actor=analyst, version=version)
    return workflow


async def recv(socket: ClientConnection, timeout: float = 10) -> str:
    return str(await asyncio.wait_for(socket.recv(), timeout))


def test_a_reviewer_hears_of_new_items_in_her_queues_only(asgi_server, analyst, reviewer, team):
    other_reviewer = user_create(username="olga", password=PASSWORD, roles=["reviewer"], first_name="Olga")
    other_team = team_create(name="Finance", members=[analyst, other_reviewer])
    claims = approval_workflow(analyst, team, "Claims gate")
    finance = approval_workflow(analyst, other_team, "Finance gate")
    url = asgi_server.replace("http://", "ws://") + "/ws/inbox/?after=0&q=view%3Dunclaimed"

    async def listen(cookie: str, start) -> list[str]:
        async with connect(url, origin=asgi_server, additional_headers={"Cookie": cookie}) as socket:
            first = await recv(socket)  # the bar as it stands at connect: nothing new yet
            await asyncio.to_thread(start)
            messages = [first]
            try:
                while True:
                    messages.append(await recv(socket, 5))
            except TimeoutError:
                return messages

    def start_both() -> None:
        for workflow in (claims, finance, claims):
            run, _ = run_start(actor=analyst, workflow=workflow, inputs={})
            drive(run)

    messages = asyncio.run(listen(session_cookie(reviewer), start_both))
    assert 'id="new-items"' in messages[0] and "new item" not in messages[0]
    assert 'hx-swap-oob="true"' in messages[-1]
    assert "2 new items in your queues" in messages[-1]  # the finance item is not hers
    assert all("3 new items" not in message for message in messages)


def test_anonymous_sockets_are_closed(asgi_server):
    url = asgi_server.replace("http://", "ws://") + "/ws/inbox/"

    async def attempt() -> int | None:
        async with connect(url, origin=asgi_server) as socket:
            with contextlib.suppress(Exception):
                await recv(socket, 5)
            return socket.close_code

    assert asyncio.run(attempt()) == 4401
