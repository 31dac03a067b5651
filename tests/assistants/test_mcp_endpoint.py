"""The MCP endpoint end to end: the SDK's own client (`mcp.client.streamable_http` + `ClientSession`) against /mcp
on the real ASGI server, with a real Celery worker running the runs a call starts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx2
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from apps.accounts.services import api_token_issue, api_token_revoke
from apps.assistants.services import workflow_tool_change, workflow_tool_publish, workflow_tool_withdraw
from apps.audit.models import AuditEvent
from apps.runs.models import Run
from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish
from tests.support.processes import asgi_server_argv, free_port, http_ok, running, service_env

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

SCHEMA = {
    "type": "object",
    "properties": {
        "n": {"type": "number", "title": "A number", "minimum": 0},
        "label": {"type": "string", "maxLength": 10},
    },
    "required": ["n"],
    "x-order": ["n", "label"],
}
DOUBLE = {
    "steps": [
        {
            "key": "double",
            "type": "data.transform",
            "config": {"fields": {"double": "input.n * 2.0", "label": "input.label"}},
        }
    ]
}


def publish(analyst, team, name, graph=DOUBLE, schema=SCHEMA):
    workflow = workflow_create(actor=analyst, name=name, team=team)
    version = workflow_version_create(actor=analyst, workflow=workflow, graph=graph, input_schema=schema)
    workflow_version_publish(actor=analyst, version=version)
    return workflow


def token_for(user) -> str:
    return api_token_issue(user=user, name="mcp", lifetime_days=7)[1]


def with_session(base: str, token: str | None, work: Callable[[ClientSession], Awaitable[Any]]) -> Any:
    """Run `work` in an initialized MCP session with `token` (the handshake era: protocol 2025-11-25)."""

    async def main() -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        timeout = httpx2.Timeout(30.0, read=300.0)
        async with (
            httpx2.AsyncClient(headers=headers, timeout=timeout) as http,
            streamable_http_client(f"{base}/mcp", http_client=http) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            return await work(session)

    return run_unwrapped(main())


def run_unwrapped(coroutine: Awaitable[Any]) -> Any:
    """asyncio.run, with an error from inside the client's task groups raised as itself (an MCPError for a
    JSON-RPC error answer), not as the one-member exception group the task groups wrap it in."""
    try:
        return asyncio.run(coroutine)  # type: ignore[arg-type]
    except BaseExceptionGroup as group:
        error: BaseException = group
        while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
            error = error.exceptions[0]
        raise error from None


async def names(session: ClientSession) -> list[str]:
    return [tool.name for tool in (await session.list_tools()).tools]


@pytest.fixture
def doubling(analyst, team):
    workflow = publish(analyst, team, "Double it")
    tool = workflow_tool_publish(
        actor=analyst, workflow=workflow, name="double_it", description="Doubles n; returns double and label."
    )
    return workflow, tool


def test_each_person_is_offered_only_the_tools_they_may_run(
    asgi_server, doubling, analyst, reviewer, manager, outsider, team
):
    other = publish(analyst, team, "Paused one")
    paused = workflow_tool_publish(actor=analyst, workflow=other, name="paused_one", description="d")
    workflow_tool_change(actor=analyst, tool=paused, enabled=False)
    listing = with_session(asgi_server, token_for(analyst), lambda s: s.list_tools())
    [tool] = listing.tools
    assert (tool.name, tool.title, tool.description) == (
        "double_it",
        "Double it",
        "Doubles n; returns double and label.",
    )
    assert tool.input_schema == {
        "type": "object",
        "properties": {
            "n": {"type": "number", "title": "A number", "minimum": 0},
            "label": {"type": "string", "maxLength": 10},
        },
        "required": ["n"],
        "additionalProperties": False,
    }
    assert with_session(asgi_server, token_for(reviewer), names) == ["double_it"]  # her team's workflow
    assert with_session(asgi_server, token_for(manager), names) == []  # may see it, may not run it
    assert with_session(asgi_server, token_for(outsider), names) == []


def test_a_call_runs_the_workflow_and_returns_its_output(asgi_server, celery_worker_process, doubling, reviewer):
    workflow, _tool = doubling

    async def call(session: ClientSession) -> Any:
        return await session.call_tool("double_it", {"n": 21, "label": "x"})

    result = with_session(asgi_server, token_for(reviewer), call)
    assert result.is_error is False, result.content
    assert result.structured_content == {"double": 42.0, "label": "x"}
    assert json.loads(result.content[0].text) == {"double": 42.0, "label": "x"}
    run = Run.objects.get(workflow=workflow)
    assert (run.trigger, run.initiator, run.status, run.inputs) == (
        "mcp",
        reviewer,
        "succeeded",
        {"n": 21, "label": "x"},
    )
    assert result.meta["aios/run"] == {
        "id": run.pk,
        "status": "succeeded",
        "url": f"{asgi_server}/runs/{run.pk}/",  # the server's AIOS_PUBLIC_URLS
    }
    [called] = AuditEvent.objects.filter(verb="mcp.tool_called")
    assert called.stream == f"run:{run.pk}" and called.actor_id == reviewer.pk
    assert json.loads(called.data) == {"tool": "double_it", "run": run.pk, "workflow": workflow.slug, "repeat": False}
    assert AuditEvent.objects.filter(stream=f"run:{run.pk}", verb="run.started").count() == 1


def test_arguments_that_do_not_fit_name_each_field_and_start_nothing(asgi_server, doubling, analyst):
    async def call(session: ClientSession) -> Any:
        return await session.call_tool("double_it", {"n": -1, "label": "far too long a label", "extra": 1})

    result = with_session(asgi_server, token_for(analyst), call)
    assert result.is_error is True
    text = result.content[0].text
    assert text.startswith("The arguments do not fit the tool's input. No run was started.")
    for line in ("- extra: This field is not part of the workflow's input.", "- label: ", "- n: "):
        assert line in text
    assert set(result.structured_content["fields"]) == {"n", "label", "extra"}
    assert not Run.objects.exists() and not AuditEvent.objects.filter(verb="mcp.tool_called").exists()
    refused = json.loads(AuditEvent.objects.get(verb="mcp.call_refused").data)
    # The refusal is audited by field name only, never with the values sent.
    assert refused["reason"] == "the arguments do not fit (extra, label, n)" and "far too long" not in str(refused)


def test_without_a_valid_token_the_answer_is_401_and_never_a_tool_list(asgi_server, doubling, analyst):
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    accept = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}
    for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": f"Token {token_for(analyst)}"}):
        response = httpx2.post(f"{asgi_server}/mcp", json=body, headers={**accept, **headers})
        assert response.status_code == 401, headers
        assert response.headers["WWW-Authenticate"].startswith('Bearer realm="AIOS MCP"')
        assert "double_it" not in response.text and "tools" not in response.json()
    rita = analyst.__class__.objects.get(username="rita")
    token, revoked = api_token_issue(user=rita, name="mcp", lifetime_days=7)
    api_token_revoke(token=token, actor=rita)
    with pytest.raises(MCPError, match="Invalid, expired or revoked API token"):
        with_session(asgi_server, revoked, names)
    with pytest.raises(MCPError, match="Send your AIOS API token"):
        with_session(asgi_server, None, names)


def test_a_tool_the_caller_may_not_run_is_unknown_and_the_refusal_audited(
    asgi_server, doubling, analyst, manager, outsider
):
    _workflow, tool = doubling

    async def call(session: ClientSession, name: str = "double_it") -> Any:
        return await session.call_tool(name, {"n": 1})

    for person in (manager, outsider):  # the manager may see the workflow, the outsider not even that
        with pytest.raises(MCPError, match=r"^Unknown tool: double_it$"):
            with_session(asgi_server, token_for(person), call)
    with pytest.raises(MCPError, match=r"^Unknown tool: no_such_tool$"):
        with_session(asgi_server, token_for(analyst), lambda s: call(s, "no_such_tool"))
    refused = list(AuditEvent.objects.filter(verb="mcp.call_refused").order_by("id"))
    assert [(event.actor_id, event.stream) for event in refused] == [
        (manager.pk, f"assistants.publishedtool:{tool.pk}"),
        (outsider.pk, f"assistants.publishedtool:{tool.pk}"),
        (analyst.pk, f"accounts.user:{analyst.pk}"),
    ]
    assert json.loads(refused[0].data) == {"tool": "double_it", "reason": "the caller may not run the workflow"}
    assert json.loads(refused[2].data) == {"tool": "no_such_tool", "reason": "no tool has this name"}
    assert not Run.objects.exists()


def test_a_withdrawn_tool_is_gone_from_the_list_and_unknown_to_calls(asgi_server, doubling, analyst):
    _workflow, tool = doubling
    token = token_for(analyst)
    assert with_session(asgi_server, token, names) == ["double_it"]
    workflow_tool_withdraw(actor=analyst, tool=tool)
    assert with_session(asgi_server, token, names) == []
    with pytest.raises(MCPError, match="Unknown tool: double_it"):
        with_session(asgi_server, token, lambda s: s.call_tool("double_it", {"n": 1}))


def test_a_failed_run_is_a_tool_error_with_its_reason_and_address(asgi_server, celery_worker_process, analyst, team):
    graph = {"steps": [{"key": "risky", "type": "data.transform", "config": {"fields": {"x": "input.missing"}}}]}
    workflow = publish(analyst, team, "Risky", graph=graph)
    workflow_tool_publish(actor=analyst, workflow=workflow, name="risky", description="Fails.")
    result = with_session(asgi_server, token_for(analyst), lambda s: s.call_tool("risky", {"n": 1}))
    run = Run.objects.get(workflow=workflow)
    assert run.status == "failed" and result.is_error is True
    text = result.content[0].text
    assert text.startswith(f"Run #{run.pk} failed: ") and run.error in text and text.endswith(f"/runs/{run.pk}/")


def test_an_idempotency_key_in_meta_answers_a_repeat_with_the_same_run(
    asgi_server, celery_worker_process, doubling, analyst
):
    async def twice(session: ClientSession) -> Any:
        meta = {"aios/idempotency_key": "order-77"}
        first = await session.call_tool("double_it", {"n": 2}, meta=meta)
        second = await session.call_tool("double_it", {"n": 2}, meta=meta)
        other = await session.call_tool("double_it", {"n": 3}, meta=meta)
        return first, second, other

    first, second, other = with_session(asgi_server, token_for(analyst), twice)
    assert first.meta["aios/run"]["id"] == second.meta["aios/run"]["id"] and Run.objects.count() == 1
    assert second.structured_content == {"double": 4.0, "label": ""}  # an optional text left out is empty
    assert other.is_error is True and "already used for a different request" in other.content[0].text
    repeat = AuditEvent.objects.filter(verb="mcp.tool_called").order_by("id").last()
    assert json.loads(repeat.data)["repeat"] is True


def test_the_modern_protocol_lists_the_same_tools(asgi_server, doubling, analyst, manager):
    """Protocol 2026-07-28 (no handshake, one request per POST) goes through the same endpoint and checks."""

    async def main(token: str) -> list[str]:
        async with (
            httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http,
            streamable_http_client(f"{asgi_server}/mcp", http_client=http) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.discover()
            return await names(session)

    assert run_unwrapped(main(token_for(analyst))) == ["double_it"]
    assert run_unwrapped(main(token_for(manager))) == []


def test_get_and_delete_are_answered_as_the_sdk_does_statelessly(asgi_server, analyst):
    """Behind the token, as the SDK's stateless transport answers them: GET opens an (empty) event stream, DELETE
    has no session to end."""
    token = token_for(analyst)
    headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
    assert httpx2.get(f"{asgi_server}/mcp", headers={"Accept": "text/event-stream"}).status_code == 401
    with httpx2.stream("GET", f"{asgi_server}/mcp", headers=headers, timeout=10) as get:
        assert get.status_code == 200 and get.headers["content-type"].startswith("text/event-stream")
    delete = httpx2.delete(f"{asgi_server}/mcp", headers=headers)
    assert delete.status_code == 405 and "Session termination not supported" in delete.text
    # A page on another site may not use a token it holds; a host the product does not serve is refused.
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    post = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"}
    elsewhere = httpx2.post(f"{asgi_server}/mcp", json=body, headers={**post, "Origin": "https://elsewhere.example"})
    assert elsewhere.status_code == 403 and "Origin not allowed" in elsewhere.text
    other_host = httpx2.post(f"{asgi_server}/mcp", json=body, headers={**post, "Host": "aios.elsewhere.example"})
    assert other_host.status_code == 400 and "Invalid Host header" in other_host.text
    # Django's pages are untouched by the mount: /mcp-tools/ is a page, not the endpoint.
    assert httpx2.get(f"{asgi_server}/mcp-tools/").status_code == 302


@pytest.mark.timeout(120)
def test_a_run_still_going_at_the_timeout_is_reported_running_with_its_address(django_db_blocker, analyst, team):
    """A server of its own with a one-second wait and lifespan events on (make run's uvicorn sends none; this
    covers the other way to start the session manager). The run waits for a person's approval."""
    graph = {"steps": [{"key": "ok", "type": "human.approval", "config": {"queue": team.group.name}}]}
    workflow = publish(analyst, team, "Needs a person", graph=graph, schema={"type": "object", "properties": {}})
    workflow_tool_publish(actor=analyst, workflow=workflow, name="needs_a_person", description="Waits.")
    token = token_for(analyst)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with django_db_blocker.unblock():
        env = service_env(DJANGO_ALLOWED_HOSTS="127.0.0.1", AIOS_PUBLIC_URLS=base, AIOS_MCP_CALL_TIMEOUT_SECONDS="1")
    argv = [arg if arg != "off" else "on" for arg in asgi_server_argv(port)]
    assert "--lifespan" in argv and "on" in argv
    with running("asgi-mcp-timeout", argv, ready=lambda log: http_ok(f"{base}/healthz"), env=env):
        result = with_session(base, token, lambda s: s.call_tool("needs_a_person", {}))
    run = Run.objects.get(workflow=workflow)
    assert result.is_error is False
    assert result.content[0].text.startswith(f"Run #{run.pk} is still running")
    assert f"{base}/runs/{run.pk}/" in result.content[0].text
    assert result.meta["aios/run"]["status"] in ("pending", "running")
