"""MCP connections and the `mcp.call` step against real MCP servers: an SDK server over Streamable HTTP in a
subprocess on a loopback port, the same server as a program over stdio, a server that answers JSON that is not
MCP, and a port where nothing listens. Tools are listed and called (the idempotency key in `_meta`, the secrets
sent and redacted wherever a server echoes them), a step runs in a real run, and every failure is one readable
line. Loopback is refused without the allowlist; a program (stdio) is set up by admins only."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import httpcore2
import pytest
from guardian.shortcuts import assign_perm

from apps.audit.models import AuditEvent
from apps.connectors.mcp import (
    IDEMPOTENCY_META_KEY,
    McpToolError,
    McpUnavailable,
    _PinnedBackend,
    mcp_tool_call,
    mcp_tools_for_user,
    mcp_tools_list,
)
from apps.connectors.models import Connection
from apps.connectors.runtime import REDACTED, ResolvedConnection, resolve
from apps.connectors.services import connection_create, connection_save, connection_test, connection_test_unsaved
from apps.core.exceptions import ValidationFailed
from apps.runs.models import StepRun
from apps.runs.services import run_start
from apps.steps.base import StepContext, StepError, Uses
from apps.steps.registry import step_config_parse, step_type_find
from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish
from tests.connectors.helpers import allow_loopback, make_connection
from tests.support.engine import drive

pytestmark = pytest.mark.django_db

SERVER_SCRIPT = Path(__file__).with_name("mcp_tool_server.py")
TOKEN = "tok-mcp-0001-secret"
API_KEY = "key-mcp-0002-secret"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for(port: int, process: subprocess.Popen[bytes], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the MCP test server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the MCP test server did not start")


@pytest.fixture(scope="module")
def mcp_url() -> Iterator[str]:
    """The SDK server over Streamable HTTP, in its own process, for the module's tests."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, str(SERVER_SCRIPT), "http", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(port, process)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        process.wait(timeout=10)


class _NotMcp(BaseHTTPRequestHandler):
    """Answers every request with JSON that is not JSON-RPC, quoting the Authorization header it got."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body = json.dumps({"hello": "I am not MCP", "you_sent": self.headers.get("authorization")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_DELETE = do_POST

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def not_mcp_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotMcp)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/mcp"
    finally:
        server.shutdown()
        server.server_close()


def _resolved(**config: Any) -> ResolvedConnection:
    secrets = config.pop("secrets", {})
    return ResolvedConnection(name="tools", kind="mcp", config=config, secrets=secrets)


def _http(url: str, **secrets: str) -> ResolvedConnection:
    return _resolved(transport="http", url=url, secrets=secrets)


def _stdio() -> ResolvedConnection:
    return _resolved(transport="stdio", command=sys.executable, args=[str(SERVER_SCRIPT), "stdio"])


# --- the client ----------------------------------------------------------------------------------------------


def test_tools_are_listed_and_called_over_streamable_http(settings: Any, mcp_url: str):
    allow_loopback(settings)
    resolved = _http(mcp_url, token=TOKEN, headers=json.dumps({"X-API-Key": API_KEY}))
    tools = {tool.name: tool for tool in mcp_tools_list(resolved)}
    assert set(tools) == {"echo", "fail", "total", "wait"}
    assert tools["echo"].description == "Answer with the arguments and what the request carried."
    # The input schema is what an agent's tool `parameters` can be: a JSON Schema object.
    assert tools["echo"].input_schema["properties"]["text"]["type"] == "string"
    assert tools["echo"].input_schema["required"] == ["text"]

    result = mcp_tool_call(resolved, "echo", {"text": "hello", "count": 2}, idempotency_key="run-7-lookup")
    assert not result.is_error
    echoed = json.loads(result.text)
    assert echoed["arguments"] == {"text": "hello", "count": 2}
    assert echoed["idempotency_key"] == "run-7-lookup"
    # The server received the token and the extra header; what it echoed back is redacted.
    assert echoed["authorization"] == f"Bearer {REDACTED}"
    assert echoed["x_api_key"] == REDACTED
    assert TOKEN not in result.text and API_KEY not in result.text

    failed = mcp_tool_call(resolved, "fail", {"reason": "no such claim"})
    assert failed.is_error and "refused: no such claim" in failed.text

    summed = mcp_tool_call(resolved, "total", {"amounts": [1.5, 2.5]})
    assert summed.data == {"total": 4.0, "count": 2} and not summed.is_error


def test_a_tool_the_server_does_not_have_is_a_tool_error(settings: Any, mcp_url: str):
    allow_loopback(settings)
    with pytest.raises(McpToolError) as refused:
        mcp_tool_call(_http(mcp_url), "delete_everything", {})
    assert refused.value.message == (
        'The MCP server of connection "tools" has no tool "delete_everything" (its tools: echo, fail, total, wait).'
    )


def test_a_host_name_is_resolved_checked_and_pinned(settings: Any, mcp_url: str):
    allow_loopback(settings)
    by_name = mcp_url.replace("127.0.0.1", "localhost")
    assert {tool.name for tool in mcp_tools_list(_http(by_name))} == {"echo", "fail", "total", "wait"}

    async def elsewhere() -> None:
        await _PinnedBackend("tools.example.com", 443, "127.0.0.1").connect_tcp("other.example.com", 443)

    with pytest.raises(httpcore2.ConnectError, match="not the MCP server's address"):
        anyio.run(elsewhere)


def test_loopback_is_refused_without_the_allowlist(settings: Any, mcp_url: str):
    settings.AIOS_HTTP_ALLOWLIST = []
    with pytest.raises(McpUnavailable) as refused:
        mcp_tools_list(_http(mcp_url))
    assert "a loopback address" in refused.value.message and "AIOS_HTTP_ALLOWLIST" in refused.value.message
    assert refused.value.message.startswith('The MCP server of connection "tools" is out of reach:')


class _RedirectsToMetadata(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.send_response(307)
        self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_DELETE = do_POST

    def log_message(self, *args: Any) -> None:
        pass


def test_a_redirect_off_the_server_is_not_followed(settings: Any):
    allow_loopback(settings)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RedirectsToMetadata)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(McpUnavailable) as refused:
            mcp_tools_list(_http(f"http://127.0.0.1:{server.server_address[1]}/mcp"))
    finally:
        server.shutdown()
        server.server_close()
    assert "Redirect to http://169.254.169.254/latest/meta-data/ not followed" in refused.value.message


def test_a_server_that_is_down_is_unavailable_in_one_line(settings: Any):
    allow_loopback(settings)
    started = time.monotonic()
    with pytest.raises(McpUnavailable) as down:
        mcp_tool_call(_http(f"http://127.0.0.1:{_free_port()}/mcp", token=TOKEN), "echo", {"text": "x"})
    assert time.monotonic() - started < 10
    message = down.value.message
    assert message.startswith('The MCP server of connection "tools" could not be used: could not connect')
    assert "\n" not in message and TOKEN not in message and not down.value.uncertain


def test_json_that_is_not_mcp_is_unavailable_in_one_line(settings: Any, not_mcp_url: str, caplog: Any):
    allow_loopback(settings)
    with pytest.raises(McpUnavailable) as garbage:
        mcp_tools_list(_http(not_mcp_url, token=TOKEN))
    message = garbage.value.message
    assert "did not complete the MCP handshake: its answer is not a JSON-RPC message" in message
    assert "Is the URL an MCP endpoint?" in message and "\n" not in message
    # The server quoted the token back; neither the error nor the log lines carry it.
    assert TOKEN not in message and TOKEN not in caplog.text


def test_a_server_that_never_answers_is_cut_off_at_the_time_limit():
    # A program that never speaks stands for a server that hangs.
    silent = _resolved(transport="stdio", command=sys.executable, args=["-c", "import time; time.sleep(60)"])
    started = time.monotonic()
    with pytest.raises(McpUnavailable) as slow:
        mcp_tools_list(silent, timeout=1.5)
    assert time.monotonic() - started < 10  # the program is stopped, not waited for
    assert slow.value.message == 'The MCP server of connection "tools" did not finish the session within 1.5 seconds.'


def test_a_tool_call_past_its_time_limit_has_an_unknown_outcome(settings: Any, mcp_url: str):
    allow_loopback(settings)
    started = time.monotonic()
    with pytest.raises(McpUnavailable) as slow:
        mcp_tool_call(_http(mcp_url), "wait", {"seconds": 30}, timeout=2)
    assert time.monotonic() - started < 10
    assert slow.value.message == 'The MCP server of connection "tools" did not finish the tool call within 2 seconds.'
    assert slow.value.uncertain  # the tool may have run: at-most-once steps go to a person
    assert mcp_tool_call(_http(mcp_url), "wait", {"seconds": 0.1}).text == "waited 0.1 s"


def test_stdio_round_trip_with_a_minimal_environment(monkeypatch: Any):
    monkeypatch.setenv("AIOS_TEST_SECRET_MARKER", "must-not-reach-the-program")
    resolved = _stdio()
    assert {tool.name for tool in mcp_tools_list(resolved)} == {"echo", "fail", "total", "wait"}
    result = mcp_tool_call(resolved, "echo", {"text": "over stdio"}, idempotency_key="run-8-x")
    echoed = json.loads(result.text)
    assert echoed["arguments"]["text"] == "over stdio" and echoed["idempotency_key"] == "run-8-x"
    assert echoed["environment_has_secret"] is False
    assert IDEMPOTENCY_META_KEY == "aios/idempotency_key"


def test_a_program_that_is_not_mcp_says_what_it_printed():
    broken = _resolved(
        transport="stdio", command=sys.executable, args=["-c", "import sys; print('no licence file', file=sys.stderr)"]
    )
    with pytest.raises(McpUnavailable) as failed:
        mcp_tools_list(broken)
    assert "Is the program an MCP server?" in failed.value.message
    assert "The program said: no licence file" in failed.value.message


# --- connections: settings, rights, test and audit ---------------------------------------------------------------


def test_stdio_connections_are_for_admins_only(
    admin_user_role: Any, analyst: Any, team: Any, tmp_path: Path, client: Any
):
    marker = tmp_path / "started"
    stdio = {"transport": "stdio", "command": "/usr/bin/touch", "args": [str(marker)]}
    connection = make_connection(
        team, name="tools", kind="mcp", config={"transport": "http", "url": "https://t.example/mcp"}
    )
    assign_perm("connectors.manage_connection", analyst, connection)

    with pytest.raises(ValidationFailed) as refused:
        connection_save(actor=analyst, connection=connection, kind="mcp", config=stdio, secrets={})
    assert (
        "Only admins may create or change an MCP connection that starts a program"
        in refused.value.fields["transport"][0]
    )
    tried = connection_test_unsaved(actor=analyst, kind="mcp", config=stdio, secrets={}, connection=connection)
    assert not tried.ok and "Only admins" in tried.message
    assert not marker.exists()  # nothing was started
    connection.refresh_from_db()
    assert connection.config["transport"] == "http"

    # The page says so under the field, and saves nothing.
    client.force_login(analyst)
    response = client.post(
        f"/connections/{connection.name}/",
        {
            "label": "Tools",
            "team": team.pk,
            "config_transport": "stdio",
            "config_command": "/usr/bin/touch",
            "config_args": str(marker),
        },
    )
    assert response.status_code == 400
    assert "Only admins may create or change an MCP connection that starts a program" in response.content.decode()
    assert not marker.exists()

    # An admin may; the program must be an absolute path to an executable file.
    not_a_program = tmp_path / "notes.txt"
    not_a_program.write_text("just text")
    not_a_program.chmod(0o644)
    for command, reason in (
        ("python3", "absolute path"),
        ("/nonexistent/mcp", "there is no program"),
        (str(not_a_program), "not executable"),
    ):
        with pytest.raises(ValidationFailed) as bad:
            connection_create(
                actor=admin_user_role,
                name="prog",
                label="Prog",
                kind="mcp",
                team=team,
                config={"transport": "stdio", "command": command},
            )
        assert reason in " ".join(bad.value.fields["command"])
    created = connection_create(
        actor=admin_user_role,
        name="prog",
        label="Prog",
        kind="mcp",
        team=team,
        config={"transport": "stdio", "command": sys.executable, "args": [str(SERVER_SCRIPT), "stdio"]},
    )
    # Managing it does not let a non-admin change it, even only its label.
    assign_perm("connectors.manage_connection", analyst, created)
    with pytest.raises(ValidationFailed):
        connection_save(
            actor=analyst, connection=created, kind="mcp", config=created.config, secrets={}, label="Renamed"
        )


def test_the_test_lists_the_tools_and_nothing_secret_reaches_the_audit(
    settings: Any, admin_user_role: Any, team: Any, mcp_url: str, client: Any
):
    allow_loopback(settings)
    connection = make_connection(
        team,
        name="tools",
        kind="mcp",
        config={"transport": "http", "url": mcp_url},
        secrets={"token": TOKEN, "headers": json.dumps({"X-API-Key": API_KEY})},
    )
    result = connection_test(actor=admin_user_role, connection=connection)
    assert result.ok, result.message
    assert result.message == "Connected and listed 4 tools: echo, fail, total, wait."
    assert ("fail", "Always refuses, with the reason given.") in result.tools
    connection.refresh_from_db()
    assert connection.last_test_ok and "echo" in connection.last_test_message

    # The test button's fragment lists names and descriptions.
    client.force_login(admin_user_role)
    page = client.post(f"/connections/{connection.name}/test/", HTTP_HX_REQUEST="true").content.decode()
    assert "Tools the server offers" in page and "Add up the amounts." in page

    down = make_connection(
        team,
        name="down",
        kind="mcp",
        config={"transport": "http", "url": f"http://127.0.0.1:{_free_port()}/mcp"},
        secrets={"token": TOKEN},
    )
    failed = connection_test(actor=admin_user_role, connection=down)
    assert not failed.ok and "could not connect" in failed.message
    events = AuditEvent.objects.filter(target_type="connectors.connection")
    assert events.filter(verb="connection.tested").count() == 3  # two tests of "tools", one of "down"
    assert all(TOKEN not in (event.data or "") and API_KEY not in (event.data or "") for event in events)
    assert resolve(Connection.objects.get(name="tools")).secrets["token"] == TOKEN  # stored, encrypted


def test_the_extra_headers_secret_is_checked_per_field(admin_user_role: Any, team: Any):
    with pytest.raises(ValidationFailed) as refused:
        connection_create(
            actor=admin_user_role,
            name="tools",
            label="Tools",
            kind="mcp",
            team=team,
            config={"transport": "http", "url": "https://tools.example.com/mcp"},
            secrets={"headers": json.dumps({"Mcp-Session-Id": "x"})},
        )
    assert refused.value.fields == {
        "secrets.headers": ['"Mcp-Session-Id" is set by the MCP transport and cannot be given.']
    }


def test_the_builder_lists_tools_only_for_those_who_may_use_the_connection(
    settings: Any, analyst: Any, manager: Any, team: Any, mcp_url: str
):
    allow_loopback(settings)
    make_connection(team, name="tools", kind="mcp", config={"transport": "http", "url": mcp_url})
    assert [tool.name for tool in mcp_tools_for_user(analyst, "tools")] == ["echo", "fail", "total", "wait"]
    with pytest.raises(McpUnavailable, match=r'The connection "tools" is not one you may use\.'):
        mcp_tools_for_user(manager, "tools")
    with pytest.raises(McpUnavailable, match=r'There is no connection "nope"\.'):
        mcp_tools_for_user(analyst, "nope")
    # A server that is down is remembered for a few seconds: the builder does not wait for it on every render.
    make_connection(
        team, name="down", kind="mcp", config={"transport": "http", "url": f"http://127.0.0.1:{_free_port()}/mcp"}
    )
    with pytest.raises(McpUnavailable, match="could not connect"):
        mcp_tools_for_user(analyst, "down")
    started = time.monotonic()
    with pytest.raises(McpUnavailable, match="could not connect"):
        mcp_tools_for_user(analyst, "down")
    assert time.monotonic() - started < 0.5


# --- the mcp.call step -------------------------------------------------------------------------------------------


def _publish(analyst: Any, team: Any, connection: str, tool: str, inputs: dict[str, str]) -> Any:
    workflow = workflow_create(actor=analyst, name=f"Claims lookup {tool}", team=team)
    graph = {
        "steps": [
            {
                "key": "lookup",
                "type": "mcp.call",
                "config": {"connection": connection, "tool": tool, "timeout_seconds": 20},
                "inputs": inputs,
            }
        ]
    }
    schema = {"type": "object", "properties": {"claim": {"type": "string"}}, "required": ["claim"]}
    version = workflow_version_create(actor=analyst, workflow=workflow, graph=graph, input_schema=schema)
    workflow_version_publish(actor=analyst, version=version)
    return workflow


def test_the_step_declares_its_connection_and_simulates():
    step_type = step_type_find("mcp.call")
    assert step_type is not None and step_type.side_effects and step_type.runs_async()
    config = step_config_parse("mcp.call", {"connection": "tools", "tool": "echo"})
    assert step_type.uses(config) == [Uses("connection", "tools", kind="mcp", field="connection")]
    schema = step_type.config_schema()
    assert schema["properties"]["connection"]["x-widget"] == "connection-mcp"
    assert (
        schema["properties"]["timeout_seconds"]["default"] == 30
        and schema["properties"]["timeout_seconds"]["maximum"] == 300
    )
    context = StepContext(run_id=1, step_key="lookup", input={}, steps={}, idempotency_key="k", params={"text": "x"})
    assert step_type().simulate(config, context)["request"] == {
        "connection": "tools",
        "tool": "echo",
        "arguments": {"text": "x"},
    }


def test_an_mcp_call_step_runs_in_a_real_run(settings: Any, analyst: Any, team: Any, mcp_url: str):
    allow_loopback(settings)
    make_connection(
        team, name="tools", kind="mcp", config={"transport": "http", "url": mcp_url}, secrets={"token": TOKEN}
    )
    workflow = _publish(analyst, team, "tools", "echo", {"text": "input.claim", "count": "2"})
    run = drive(run_start(actor=analyst, workflow=workflow, inputs={"claim": "CLM-1"})[0])
    assert run.status == "succeeded", run.error
    step = StepRun.objects.get(run=run, step_key="lookup")
    echoed = json.loads(step.output["text"])
    assert echoed["arguments"] == {"text": "CLM-1", "count": 2}
    assert echoed["idempotency_key"]  # the step's key, stable across attempts
    assert echoed["authorization"] == f"Bearer {REDACTED}"
    # The tool declares structured output: the same answer as data, redacted alike.
    assert step.output["is_error"] is False and step.output["data"] == echoed


def test_a_tool_error_fails_the_step_with_the_tools_words(settings: Any, analyst: Any, team: Any, mcp_url: str):
    allow_loopback(settings)
    make_connection(team, name="tools", kind="mcp", config={"transport": "http", "url": mcp_url})
    workflow = _publish(analyst, team, "tools", "fail", {"reason": "input.claim"})
    run = drive(run_start(actor=analyst, workflow=workflow, inputs={"claim": "CLM-2"})[0])
    assert run.status == "failed"
    error = StepRun.objects.get(run=run, step_key="lookup").error
    assert error == 'Step "lookup": the tool "fail" reported an error: Error executing tool fail: refused: CLM-2'


def test_a_server_that_is_down_fails_the_step_readably_and_retryably(settings: Any, analyst: Any, team: Any):
    allow_loopback(settings)
    make_connection(
        team,
        name="tools",
        kind="mcp",
        config={"transport": "http", "url": f"http://127.0.0.1:{_free_port()}/mcp"},
        secrets={"token": TOKEN},
    )
    workflow = _publish(analyst, team, "tools", "echo", {"text": "input.claim"})
    run = drive(run_start(actor=analyst, workflow=workflow, inputs={"claim": "CLM-3"})[0])
    assert run.status == "failed"
    error = StepRun.objects.get(run=run, step_key="lookup").error
    assert error.startswith('Step "lookup": The MCP server of connection "tools" could not be used: could not connect')
    assert TOKEN not in error and "Traceback" not in error

    # The same failure, raised by the step itself: retryable, and certain (no call left).
    step_type = step_type_find("mcp.call")
    config = step_config_parse("mcp.call", {"connection": "tools", "tool": "echo"})
    context = StepContext(
        run_id=run.pk,
        step_key="lookup",
        input={},
        steps={},
        idempotency_key="k",
        params={"text": "x"},
        workflow_id=workflow.pk,
    )
    with pytest.raises(StepError) as raised:
        step_type().execute(config, context)
    assert raised.value.retryable and not raised.value.uncertain


def test_a_run_without_the_right_to_the_connection_cannot_call_it(settings: Any, team: Any, mcp_url: str):
    allow_loopback(settings)
    make_connection(team, name="tools", kind="mcp", config={"transport": "http", "url": mcp_url})
    step_type = step_type_find("mcp.call")
    config = step_config_parse("mcp.call", {"connection": "tools", "tool": "echo"})
    context = StepContext(run_id=1, step_key="lookup", input={}, steps={}, idempotency_key="k", params={"text": "x"})
    with pytest.raises(StepError) as refused:
        step_type().execute(config, context)
    assert refused.value.message == 'Step "lookup": This workflow may not use the connection "tools".'
    assert not refused.value.retryable


def test_an_answer_larger_than_the_limit_is_cut_off_not_read(mcp_url, settings):
    """A server that answers with more than AIOS_MCP_MAX_RESPONSE_BYTES is refused while its answer streams in:
    the client never holds it whole (a hostile server could otherwise fill the worker's memory)."""
    settings.AIOS_HTTP_ALLOWLIST = ["127.0.0.1/32"]
    settings.AIOS_MCP_MAX_RESPONSE_BYTES = 4096
    with pytest.raises(McpUnavailable) as failure:
        mcp_tool_call(_http(mcp_url), "echo", {"text": "x" * 20_000})
    assert "larger than" in failure.value.message and "the limit" in failure.value.message
    settings.AIOS_MCP_MAX_RESPONSE_BYTES = 8 * 1024 * 1024
    assert mcp_tool_call(_http(mcp_url), "echo", {"text": "x" * 20_000}).data["arguments"]["text"] == "x" * 20_000
