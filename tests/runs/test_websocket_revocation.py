"""L1: an open WebSocket is closed when its user signs out, is deactivated or loses access, on every
consumer (run page, chat answer, inbox), against the real ASGI server and Redis channel layer."""

from __future__ import annotations

import asyncio
import json

import pytest
from django.test import Client
from django.utils import timezone
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from apps.accounts.models import User
from apps.audit.models import AuditEvent
from apps.runs.events import publish_run_changed
from apps.runs.models import Run, StepRun

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def signed_in(user) -> tuple[Client, str]:
    client = Client()
    client.force_login(user)
    return client, f"sessionid={client.cookies['sessionid'].value}"


@pytest.fixture
def run(analyst, claims_workflow, sample_claim):
    version = claims_workflow.versions.get()
    run = Run.objects.create(
        workflow=claims_workflow,
        version=version,
        inputs={"claim_text": sample_claim},
        initiator=analyst,
        status=Run.Status.RUNNING,
        started_at=timezone.now(),
    )
    StepRun.objects.create(run=run, step_key="extract", step_type="llm.generate", name="Extract", position=0)
    return run


async def open_socket(base: str, path: str, cookie: str) -> ClientConnection:
    socket = await connect(base.replace("http://", "ws://") + path, origin=base, additional_headers={"Cookie": cookie})
    return socket


async def until_closed(socket: ClientConnection, timeout: float = 20) -> tuple[int | None, list[str]]:
    """Read until the server closes; returns the close code and whatever arrived before."""
    received: list[str] = []
    async with asyncio.timeout(timeout):
        try:
            while True:
                received.append(str(await socket.recv()))
        except ConnectionClosed:
            pass
    return socket.close_code, received


def test_signing_out_closes_the_sockets_of_that_session_only(asgi_server, reviewer, run):
    browser, cookie = signed_in(reviewer)
    _, other_cookie = signed_in(reviewer)  # the same person in another browser

    async def scenario() -> tuple[int | None, bool]:
        mine = await open_socket(asgi_server, f"/ws/runs/{run.pk}/", cookie)
        other = await open_socket(asgi_server, f"/ws/runs/{run.pk}/", other_cookie)
        await asyncio.wait_for(mine.recv(), 10)  # catch-up render: the socket is subscribed
        await asyncio.wait_for(other.recv(), 10)
        assert (await asyncio.to_thread(browser.post, "/accounts/logout/")).status_code in (200, 302)
        code, _ = await until_closed(mine)
        # The other browser's socket still gets pushes.
        await asyncio.to_thread(publish_run_changed, run.pk, ["extract"])
        pushed = 'id="run-header"' in str(await asyncio.wait_for(other.recv(), 10))
        await other.close()
        return code, pushed

    code, other_still_served = asyncio.run(scenario())
    assert code == 4403
    assert other_still_served
    denied = AuditEvent.objects.filter(verb="request.denied", actor_id=reviewer.pk).latest("id")
    assert json.loads(denied.data)["via"] == "websocket" and json.loads(denied.data)["status"] == 403


def test_deactivation_closes_every_socket_of_the_user(asgi_server, reviewer, run):
    _, cookie = signed_in(reviewer)

    async def scenario() -> int | None:
        socket = await open_socket(asgi_server, f"/ws/runs/{run.pk}/", cookie)
        await asyncio.wait_for(socket.recv(), 10)
        reviewer.is_active = False
        await asyncio.to_thread(reviewer.save)
        code, _ = await until_closed(socket)
        return code

    assert asyncio.run(scenario()) == 4403


def test_losing_access_closes_with_4404_at_once_and_is_rechecked_before_pushes(asgi_server, reviewer, team, run):
    _, cookie = signed_in(reviewer)

    async def removed_from_team() -> tuple[int | None, list[str]]:
        socket = await open_socket(asgi_server, f"/ws/runs/{run.pk}/", cookie)
        await asyncio.wait_for(socket.recv(), 10)
        await asyncio.to_thread(reviewer.groups.remove, team.group)  # a role change: re-checked at once
        return await until_closed(socket)

    code, after = asyncio.run(removed_from_team())
    assert code == 4404 and after == []

    # Access lost without any signal (a raw table change): the next push after the re-check interval is
    # refused instead of delivered.
    reviewer.groups.add(team.group)
    _, cookie = signed_in(reviewer)

    async def silently_removed() -> tuple[int | None, list[str]]:
        socket = await open_socket(asgi_server, f"/ws/runs/{run.pk}/", cookie)
        await asyncio.wait_for(socket.recv(), 10)
        await asyncio.to_thread(
            lambda: User.groups.through.objects.filter(user_id=reviewer.pk, group_id=team.group_id).delete()
        )
        # Past AIOS_SOCKET_RECHECK_SECONDS (2 s by default) since the connect-time check.
        await asyncio.sleep(2.5)
        await asyncio.to_thread(publish_run_changed, run.pk, ["extract"])
        return await until_closed(socket)

    code, after = asyncio.run(silently_removed())
    assert code == 4404
    assert not any("run-header" in message for message in after)


def test_inbox_socket_closes_on_sign_out(asgi_server, reviewer, team):
    browser, cookie = signed_in(reviewer)

    async def scenario() -> int | None:
        socket = await open_socket(asgi_server, "/ws/inbox/", cookie)
        await asyncio.wait_for(socket.recv(), 10)
        await asyncio.to_thread(browser.post, "/accounts/logout/")
        code, _ = await until_closed(socket)
        return code

    assert asyncio.run(scenario()) == 4403
