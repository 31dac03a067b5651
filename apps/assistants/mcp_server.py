"""The MCP endpoint: published workflows as tools for outside agents, over Streamable HTTP at /mcp.

Built on the SDK's low-level `Server` and its `StreamableHTTPSessionManager` in stateless, JSON-response mode: every
POST is one self-contained exchange, so any web process can answer any request and nothing is kept between them.
aios_web/asgi.py sends /mcp here ahead of Django.

- Authentication: `Authorization: Bearer <API token>` (the REST API's tokens); without a valid one the answer is
  HTTP 401 with a `WWW-Authenticate` header, before the SDK sees the request.
- tools/list: the enabled tools whose workflow the token's user may run, with the published version's inputs.
- tools/call: a run of the workflow's newest published version as that user (trigger "mcp"), awaited up to
  AIOS_MCP_CALL_TIMEOUT_SECONDS. A tool the user may not call is answered exactly like one that does not exist
  (existence is not leaked) and recorded as `mcp.call_refused`.

Database work runs on a small pool of threads of this module's own (asgiref's `sync_to_async` onto them): their
connections stay open between calls, so a call waiting for its run polls on an open connection, and a connection
that fails (PostgreSQL restarted) is closed so the thread's next job opens a new one.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import mcp_types as types
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import InterfaceError, OperationalError, connection
from django.http.request import split_domain_port, validate_host
from django.urls import reverse
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError

from apps.accounts.models import User
from apps.accounts.services import api_token_authenticate
from apps.assistants.selectors import tool_get_by_name, tools_offered_to
from apps.assistants.services import tool_call_refused_record, tool_call_start
from apps.core import context
from apps.core.exceptions import ApplicationError, Forbidden, ValidationFailed
from apps.runs.documents import document_inputs_expand
from apps.runs.models import Run
from apps.workflows.input_schema import input_validate
from apps.workflows.selectors import workflow_can_run

logger = logging.getLogger(__name__)

T = TypeVar("T")

PATH = "/mcp"
POLL_SECONDS = 0.2
IDEMPOTENCY_META_KEY = "aios/idempotency_key"
RUN_META_KEY = "aios/run"
IDEMPOTENCY_KEY_MAX_LENGTH = 128
# Scope keys the endpoint sets for the handlers (the SDK hands them the request, whose scope carries these).
SCOPE_USER = "aios.user"
SCOPE_REQUEST_ID = "aios.request_id"

_DB_THREADS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="mcp-db")


def _on_db_thread(request_id: str, function: Callable[..., T], *args: Any) -> T:
    token = context.request_id.set(request_id)
    try:
        return function(*args)
    except (OperationalError, InterfaceError):
        connection.close()
        raise
    finally:
        context.request_id.reset(token)


async def _db(request_id: str, function: Callable[..., T], *args: Any) -> T:
    return await sync_to_async(_on_db_thread, thread_sensitive=False, executor=_DB_THREADS)(request_id, function, *args)


def _run_url(run_id: int) -> str:
    return settings.AIOS_PUBLIC_URLS[0].rstrip("/") + reverse("runs:detail", args=[run_id])


# --- what the handlers do, on the database threads -------------------------------------------------------------


def _tool_listing(user: User) -> list[types.Tool]:
    return [
        types.Tool(
            name=offered.tool.name,
            title=offered.workflow.name,
            description=offered.tool.description,
            input_schema=offered.input_schema,
        )
        for offered in tools_offered_to(user)
    ]


@dataclass
class _CallStart:
    """How a call began: a run (`run_id`), or an answer without one (`unknown`, or a tool error `result`)."""

    run_id: int | None = None
    unknown: bool = False
    result: types.CallToolResult | None = None
    fields: dict[str, list[str]] = field(default_factory=dict)


def _refusal_reason(user: User, name: str) -> str:
    """Why `user` was told `name` is unknown, for the audit trail only (never for the caller)."""
    tool = tool_get_by_name(name)
    if tool is None:
        return "no tool has this name"
    if not tool.enabled:
        return "the tool is paused"
    if tool.workflow.archived_at is not None:
        return "the workflow is archived"
    if not workflow_can_run(user, tool.workflow):
        return "the caller may not run the workflow"
    return "the workflow has no published version"


def _fields_result(message: str, fields: dict[str, list[str]]) -> types.CallToolResult:
    lines = [f"- {name}: {' '.join(problems)}" for name, problems in sorted(fields.items())]
    text = f"{message} No run was started. Fix these fields and call again:\n" + "\n".join(lines)
    return types.CallToolResult(
        content=[types.TextContent(text=text)], structured_content={"fields": fields}, is_error=True
    )


def _call_start(user: User, name: str, arguments: dict[str, Any], idempotency_key: str) -> _CallStart:
    offered = tools_offered_to(user, name=name)
    if not offered:
        tool_call_refused_record(actor=user, name=name, reason=_refusal_reason(user, name))
        return _CallStart(unknown=True)
    tool, version = offered[0].tool, offered[0].version
    try:
        inputs = document_inputs_expand(actor=user, schema=version.input_schema, inputs=arguments)
        _cleaned, errors = input_validate(version.input_schema, inputs)
        if errors:
            raise ValidationFailed("The arguments do not fit the tool's input.", fields=errors)
        run, _created = tool_call_start(actor=user, tool=tool, inputs=inputs, idempotency_key=idempotency_key)
    except ValidationFailed as refusal:
        # Audited by field name only: the values may be anything the caller sent.
        fields = ", ".join(sorted(refusal.fields)) or "the input"
        tool_call_refused_record(actor=user, name=name, reason=f"the arguments do not fit ({fields})")
        return _CallStart(result=_fields_result("The arguments do not fit the tool's input.", refusal.fields))
    except Forbidden:
        # The right to run was withdrawn since the listing above: an unknown tool, as for anyone without it.
        tool_call_refused_record(actor=user, name=name, reason="the caller may not run the workflow")
        return _CallStart(unknown=True)
    except ApplicationError as refusal:
        # Archived or unpublished between the listing and the call, an idempotency key reused for other arguments.
        tool_call_refused_record(actor=user, name=name, reason=refusal.message[:300])
        return _CallStart(result=types.CallToolResult(content=[types.TextContent(text=refusal.message)], is_error=True))
    return _CallStart(run_id=run.pk)


def _run_status(run_id: int) -> str:
    return str(Run.objects.values_list("status", flat=True).get(pk=run_id))


def _run_state(run_id: int) -> tuple[str, Any, str]:
    status, output, error = Run.objects.values_list("status", "output", "error").get(pk=run_id)
    return status, output, error


def _finished_result(run_id: int, status: str, output: Any, error: str) -> types.CallToolResult:
    url = _run_url(run_id)
    meta = {RUN_META_KEY: {"id": run_id, "status": status, "url": url}}
    if status == Run.Status.SUCCEEDED:
        # structuredContent is an object up to protocol 2025-11-25: other JSON values are wrapped.
        structured = output if isinstance(output, dict) else {"result": output}
        text = json.dumps(output, cls=DjangoJSONEncoder, ensure_ascii=False)
        return types.CallToolResult(content=[types.TextContent(text=text)], structured_content=structured, meta=meta)
    verb = "failed" if status == Run.Status.FAILED else "was cancelled"
    detail = f": {error}" if error else "."
    text = f"Run #{run_id} {verb}{detail} Details: {url}"
    return types.CallToolResult(content=[types.TextContent(text=text)], is_error=True, meta=meta)


# --- the MCP handlers --------------------------------------------------------------------------------------------


def _caller(ctx: Any) -> tuple[User, str]:
    """The authenticated user and request id the endpoint put in the HTTP request's scope."""
    request = ctx.request
    scope = getattr(request, "scope", None) or {}
    user = scope.get(SCOPE_USER)
    if user is None:  # only reachable if something mounted the session manager without `McpEndpoint`
        raise MCPError(types.INVALID_REQUEST, "Not authenticated.")
    return user, scope.get(SCOPE_REQUEST_ID) or uuid.uuid4().hex


async def list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
    """The tools the caller may call (no paging: a person's runnable workflows are few)."""
    user, request_id = _caller(ctx)
    return types.ListToolsResult(tools=await _db(request_id, _tool_listing, user))


def _idempotency_key(meta: Any) -> str:
    value = (meta or {}).get(IDEMPOTENCY_META_KEY) if isinstance(meta, dict) else None
    if value is None:
        return ""
    if not isinstance(value, str) or not 0 < len(value) <= IDEMPOTENCY_KEY_MAX_LENGTH:
        raise MCPError(
            types.INVALID_PARAMS,
            f"_meta[{IDEMPOTENCY_META_KEY!r}] must be text of 1 to {IDEMPOTENCY_KEY_MAX_LENGTH} characters.",
        )
    return value


async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
    """Start a run of the tool's workflow and wait for it (see the module's docstring for every answer)."""
    user, request_id = _caller(ctx)
    key = _idempotency_key(params.meta)
    started = await _db(request_id, _call_start, user, params.name, dict(params.arguments or {}), key)
    if started.unknown:
        raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {params.name}")
    if started.result is not None:
        return started.result
    assert started.run_id is not None
    run_id = started.run_id
    deadline = time.monotonic() + settings.AIOS_MCP_CALL_TIMEOUT_SECONDS
    pause = POLL_SECONDS
    while True:
        # The status only (a run's output can be large), more slowly as the wait grows: a long wait for a
        # person costs a query every few seconds, not five a second.
        if await _db(request_id, _run_status, run_id) in Run.FINISHED:
            status, output, error = await _db(request_id, _run_state, run_id)
            return _finished_result(run_id, status, output, error)
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(pause)
        pause = min(pause * 1.5, 2.0)
    url = _run_url(run_id)
    text = (
        f"Run #{run_id} is still running (it may be waiting for a person's approval). "
        f"Its result will be at {url}; calling again with the same _meta[{IDEMPOTENCY_META_KEY!r}] "
        "waits for the same run instead of starting another."
    )
    return types.CallToolResult(
        content=[types.TextContent(text=text)], meta={RUN_META_KEY: {"id": run_id, "status": "running", "url": url}}
    )


SERVER: Server[Any] = Server(
    "aios",
    title="AIOS workflows",
    instructions=(
        "Each tool runs a published AIOS workflow as the person whose API token you use, with the same rights "
        "and audit trail as a run started in AIOS. A call returns the run's output; a run that takes longer "
        "(it may wait for a person's approval) is reported as still running, with its address."
    ),
    on_list_tools=list_tools,
    on_call_tool=call_tool,
)


# --- the ASGI endpoint -------------------------------------------------------------------------------------------


def _authenticate(header: str) -> User | None:
    """The active user whose live API token (not expired, not revoked) `header` carries as `Bearer <token>`, else
    None."""
    keyword, _, key = header.strip().partition(" ")
    key = key.strip()
    if keyword.lower() != "bearer" or not key or " " in key:
        return None
    token = api_token_authenticate(key=key)
    return token.user if token is not None else None


async def _respond(send: Any, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]]) -> None:
    payload = json.dumps(body).encode()
    base = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": base + headers})
    await send({"type": "http.response.body", "body": payload})


def _error_body(code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": message}}


class McpEndpoint:
    """The ASGI app for /mcp: checks the host, the browser origin if any and the bearer token, then hands the
    request to the SDK's session manager.

    The session manager needs a task group that outlives requests. Uvicorn runs the app with `--lifespan off`
    (workers/fleet.py), so it is started on the first request, in a task of its own on the server's event loop;
    when the server does send lifespan events, `startup`/`shutdown` start and stop it instead."""

    def __init__(self, server: Server[Any]) -> None:
        self.server = server
        self._manager: StreamableHTTPSessionManager | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._starting: asyncio.Future[StreamableHTTPSessionManager] | None = None
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        await self._running()

    async def shutdown(self) -> None:
        if self._stop is not None and self._task is not None:
            self._stop.set()
            await self._task
        self._manager = self._loop = self._starting = self._stop = self._task = None

    async def _running(self) -> StreamableHTTPSessionManager:
        loop = asyncio.get_running_loop()
        if self._manager is not None and self._loop is loop:
            return self._manager
        if self._starting is not None and self._loop is loop:
            return await asyncio.shield(self._starting)
        # First request on this event loop (a manager cannot be restarted, and belongs to one loop).
        self._loop, self._manager = loop, None
        self._starting = starting = loop.create_future()
        manager = StreamableHTTPSessionManager(app=self.server, json_response=True, stateless=True)
        stop = self._stop = asyncio.Event()

        async def serve() -> None:
            try:
                async with manager.run():
                    starting.set_result(manager)
                    await stop.wait()
            except BaseException as error:
                if not starting.done():
                    starting.set_exception(error)
                raise

        # An empty context: the manager outlives this request, whose request id must not follow it around.
        self._task = loop.create_task(serve(), context=contextvars.Context())
        try:
            ready = await asyncio.shield(starting)
        except BaseException:
            self._starting = None  # the next request tries again
            raise
        self._manager = ready
        return ready

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope.get("headers", [])}
        host = headers.get("host", "")
        domain, _port = split_domain_port(host)
        if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
            await _respond(send, 400, _error_body(types.INVALID_REQUEST, "Invalid Host header."), [])
            return
        origin = headers.get("origin")
        # A browser page may call only from the product's own origins (a token in a page elsewhere is not ours).
        if origin is not None and origin.rstrip("/") not in [url.rstrip("/") for url in settings.AIOS_PUBLIC_URLS]:
            await _respond(send, 403, _error_body(types.INVALID_REQUEST, "Origin not allowed."), [])
            return
        incoming = headers.get("x-request-id", "")
        request_id = incoming if incoming.isalnum() and len(incoming) <= 64 else uuid.uuid4().hex
        authorization = headers.get("authorization", "")
        user = await _db(request_id, _authenticate, authorization) if authorization else None
        if user is None:
            error = ', error="invalid_token"' if authorization else ""
            challenge = f'Bearer realm="AIOS MCP"{error}'.encode()
            message = "Send your AIOS API token: Authorization: Bearer"
            if authorization:
                message = "Invalid, expired or revoked API token."
            await _respond(send, 401, _error_body(types.INVALID_REQUEST, message), [(b"www-authenticate", challenge)])
            return
        manager = await self._running()
        scope = {**scope, SCOPE_USER: user, SCOPE_REQUEST_ID: request_id}

        async def send_with_id(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())]}
            await send(message)

        await manager.handle_request(scope, receive, send_with_id)


endpoint = McpEndpoint(SERVER)


def is_mcp_path(path: str) -> bool:
    """Whether a request's path is the MCP endpoint's (exactly /mcp, or below /mcp/)."""
    return path == PATH or path.startswith(PATH + "/")
