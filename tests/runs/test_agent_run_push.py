"""An agent's tool call changing state is pushed as its agent's fragment over the run page's WebSocket (a tool
call is no step of its own on the page), against the real ASGI server and Redis channel layer."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import connect

from apps.runs.events import publish_run_changed
from apps.runs.models import StepRun
from tests.runs.test_agent_run_page import agent_run
from tests.runs.test_websocket import recv, session_cookie, ws_url

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_a_tool_call_change_pushes_its_agents_fragment(asgi_server, analyst, team):
    from apps.approvals.services import approval_queue_create

    approval_queue_create(
        actor=None, key="support", name="Support leads", team=team, workers=[analyst], users=[analyst]
    )
    run = agent_run(analyst, team)
    cookie = session_cookie(analyst)

    async def scenario() -> tuple[str, str]:
        async with connect(
            ws_url(asgi_server, run.pk), origin=asgi_server, additional_headers={"Cookie": cookie}
        ) as socket:
            catch_up = await recv(socket)
            await asyncio.to_thread(
                lambda: StepRun.objects.filter(run=run, step_key="agent~3").update(
                    state="succeeded", waiting_for="", output={"status": 201}
                )
            )
            await asyncio.to_thread(publish_run_changed, run.pk, ["agent~3"])
            return catch_up, await recv(socket)

    catch_up, pushed = asyncio.run(scenario())
    assert '<article class="tool-call tool-call--succeeded" id="step-agent~1"' in catch_up
    assert '<article id="step-agent" class="step step--waiting" hx-swap-oob="true"' in pushed
    call = pushed.split('id="step-agent~3"')[1].split("</article>")[0]
    assert '<span class="badge badge--succeeded">succeeded</span>' in call
    assert "waiting for approval" not in call
