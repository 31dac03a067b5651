"""The MCP client: list the tools of an MCP server a connection names, and call one, over Streamable HTTP or a
program's standard input and output (stdio), with the `mcp` SDK.

Every call opens its own session (connect, negotiate, work, close): a session is cheap next to a tool call, a
worker keeps no connection to a server between steps, and an address is checked again every time.

- Streamable HTTP goes through the outbound address policy of `apps.core.http`: the host is resolved once per
  session and every address must pass (`connection_address`: loopback, private, link-local and metadata addresses
  refused unless allowlisted in AIOS_HTTP_ALLOWLIST or the connection's allowed destinations; ports other than
  80 and 443 only when an administrator allowed them); the SDK's HTTP client then connects only to that checked
  address (`_PinnedBackend`), whatever DNS answers later, and only for the URL's own host and port. The SDK
  follows a redirect only within the endpoint's origin (same scheme, host and port), so a redirect cannot lead
  anywhere the pin does not allow. No proxy from the environment is used.
- stdio starts the connection's program (an absolute path an admin set) with the SDK's minimal environment
  (HOME, PATH, ...): no variable of the worker (database URL, keys) reaches it. Its standard error is kept for
  the error message when it fails.

Every failure becomes `McpUnavailable` (the server could not be reached or did not speak MCP: retry later) or
`McpToolError` (the server refused this call: no such tool, arguments it rejects, a result that breaks the
tool's own output schema), with a one-line message naming the connection, with the connection's secrets
redacted. A tool's own error (a result with `isError`) is not an exception: `McpResult.is_error` is set.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import httpcore2
import httpx2
from asgiref.sync import async_to_sync
from django.conf import settings
from django.core.cache import cache
from pydantic import ValidationError

from apps.connectors import kinds
from apps.connectors.runtime import ResolvedConnection, redact, resolve, secret_needles
from apps.core import http
from apps.core.exceptions import ApplicationError

T = TypeVar("T")

# The key under which a call's idempotency key travels in the request's `_meta`: stable across the step's
# attempts, so a server that records it can recognise a repeated call.
IDEMPOTENCY_META_KEY = "aios/idempotency_key"
DEFAULT_TIMEOUT_SECONDS = 30.0
LIST_TIMEOUT_SECONDS = 10.0
# What a step's output may hold of a tool's text; a longer answer is cut and says so.
MAX_TEXT_CHARS = 200_000
MAX_TOOLS = 500
_TOOLS_CACHE_SECONDS = 30
_FAILURE_CACHE_SECONDS = 10
_TOOLS_CACHE_PREFIX = "connectors:mcp-tools"
# JSON-RPC codes with which a server refuses a call itself (no such method or tool, bad arguments), as
# opposed to failing to answer it.
_REFUSAL_CODES = {-32602, -32601}


class McpUnavailable(ApplicationError):
    """The MCP server could not be used now: unreachable, refused by the address policy, too slow, not an MCP
    server, or it broke the protocol. `uncertain` is True when a tool call had been sent and its outcome is
    unknown (the tool may have run)."""

    def __init__(self, message: str, *, uncertain: bool = False) -> None:
        super().__init__(message)
        self.uncertain = uncertain


class McpToolError(ApplicationError):
    """The server answered but refused this call: the tool does not exist, or the arguments or the result do
    not fit the tool's schemas."""


@dataclass(frozen=True)
class McpTool:
    """A tool as the server lists it: its name, its description, and the JSON Schema of its arguments (what an
    agent's tool `parameters` can be taken from)."""

    name: str
    description: str
    input_schema: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "input_schema": self.input_schema}


@dataclass(frozen=True)
class McpResult:
    """A tool call's result: its text content joined, its structured content (None when it has none), and
    whether the tool reported an error itself."""

    text: str
    data: Any
    is_error: bool


# --- the SDK's logging ---------------------------------------------------------------------------------------------


class _QuietSdkLog(logging.Filter):
    """The SDK's client modules log a server's raw answers (a parse error's traceback quotes the body, a debug
    line each message), which may carry a secret the server echoed. Their records keep only the fixed text of
    warnings and errors: no arguments, no traceback, nothing below WARNING."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return False
        record.msg = f"MCP client: {str(record.msg).splitlines()[0][:200] if record.msg else ''}"
        record.args = None
        record.exc_info = None
        record.exc_text = None
        return True


def _quiet_sdk_loggers() -> None:
    for module in ("mcp.client.client", "mcp.client.session", "mcp.client.stdio", "mcp.client.streamable_http"):
        importlib.import_module(module)  # for the loggers they create
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("mcp.client"):
            logger = logging.getLogger(name)
            if not any(isinstance(item, _QuietSdkLog) for item in logger.filters):
                logger.addFilter(_QuietSdkLog())


_quiet_sdk_loggers()


# --- the pinned HTTP client -----------------------------------------------------------------------------------


class _PinnedBackend(httpcore2.AsyncNetworkBackend):
    """Connects only to the address checked for the endpoint's host and port, whatever name a request asks
    for there (TLS still verifies the certificate for the host name); any other host or port is refused."""

    def __init__(self, host: str, port: int, address: str) -> None:
        self._host, self._port, self._address = host.lower().strip("[]"), port, address
        self._inner = httpcore2.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        if (host.lower().strip("[]"), port) != (self._host, self._port):
            raise httpcore2.ConnectError(f"{host}:{port} is not the MCP server's address; not connecting.")
        return await self._inner.connect_tcp(
            self._address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class McpResponseTooLarge(httpx2.HTTPError):
    """An MCP server's answer grew past AIOS_MCP_MAX_RESPONSE_BYTES: it is cut off, not read into memory."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the server's answer is larger than {limit // 1048576 or 1} MB (the limit)")


class _CappedStream(httpx2.AsyncByteStream):
    """A response body that raises once it has brought more than `limit` bytes: the SDK reads a whole JSON
    answer into memory, and a hostile or broken server must not be able to fill a worker's."""

    def __init__(self, inner: Any, limit: int) -> None:
        self._inner, self._limit = inner, limit

    async def __aiter__(self) -> Any:
        total = 0
        async for chunk in self._inner:
            total += len(chunk)
            if total > self._limit:
                raise McpResponseTooLarge(self._limit)
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class _PinnedTransport(httpx2.AsyncHTTPTransport):
    """httpx2's transport over a connection pool whose every connection goes to the checked address, with
    every answer's size capped."""

    def __init__(self, backend: _PinnedBackend) -> None:
        super().__init__(trust_env=False)
        # The pool httpx2 built is replaced before first use by one on the pinned backend (httpx2 offers no
        # parameter for the network backend).
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=httpx2.create_ssl_context(trust_env=False),
            network_backend=backend,
            max_connections=4,
        )

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await super().handle_async_request(request)
        response.stream = _CappedStream(response.stream, settings.AIOS_MCP_MAX_RESPONSE_BYTES)
        return response


def _endpoint(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise McpUnavailable(f"{url[:200]!r} is not an http:// or https:// URL.")
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def _headers(resolved: ResolvedConnection) -> dict[str, str]:
    """The headers every request of the session carries: the extra headers, then the bearer token."""
    try:
        headers = kinds.mcp_headers_parse(resolved.secrets.get("headers", ""))
    except ValueError as error:
        raise McpUnavailable(f"The extra headers cannot be used: {error}") from None
    token = resolved.secrets.get("token", "")
    if token:
        headers = http.merge_headers(headers, {"Authorization": f"Bearer {token}"})
    return {"User-Agent": "AIOS", **headers}


def _needles(resolved: ResolvedConnection) -> list[str]:
    needles = secret_needles(resolved)
    with contextlib.suppress(ValueError):
        needles += list(kinds.mcp_headers_parse(resolved.secrets.get("headers", "")).values())
    return needles


# --- sessions ---------------------------------------------------------------------------------------------------


@asynccontextmanager
async def _session(resolved: ResolvedConnection, timeout: float, stderr: Any) -> AsyncIterator[Any]:
    """An initialised SDK client for the connection (the caller bounds the time)."""
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters
    from mcp.client.streamable_http import streamable_http_client
    from mcp_types import Implementation

    config = resolved.config
    info = Implementation(name="aios", version="1")
    if config.get("transport") == "stdio":
        command = str(config.get("command", ""))
        if not (os.path.isabs(command) and os.path.isfile(command) and os.access(command, os.X_OK)):
            raise McpUnavailable(f"There is no executable program at {command} on this worker.")
        parameters = StdioServerParameters(command=command, args=[str(arg) for arg in config.get("args") or []])
        from mcp.client.stdio import stdio_client

        async with Client(stdio_client(parameters, errlog=stderr), mode="auto", cache=None, client_info=info) as client:
            yield client
        return
    url = str(config.get("url", ""))
    host, port = _endpoint(url)
    try:
        # DNS may block: in a thread, so the executor's event loop keeps running other steps.
        address = await anyio.to_thread.run_sync(
            functools.partial(http.connection_address, host, port, destinations=resolved.destinations),
            abandon_on_cancel=True,
        )
    except http.OutboundError as error:
        raise McpUnavailable(
            f'The MCP server of connection "{resolved.name}" is out of reach: {error.message}'
        ) from None
    client_http = httpx2.AsyncClient(
        transport=_PinnedTransport(_PinnedBackend(host, port, address)),
        headers=_headers(resolved),
        timeout=httpx2.Timeout(timeout),
        trust_env=False,
        follow_redirects=False,
    )
    async with client_http:
        transport = streamable_http_client(url, http_client=client_http)
        async with Client(transport, mode="auto", cache=None, client_info=info, read_timeout_seconds=timeout) as client:
            yield client


def _leaves(error: BaseException) -> list[BaseException]:
    """The exceptions inside task-group exception groups, depth first."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def _describe(error: BaseException) -> str:
    """One line about a failure, in words (the SDK's and httpx2's exceptions have terse texts)."""
    if isinstance(error, httpx2.ConnectTimeout):
        return "connecting timed out"
    if isinstance(error, httpx2.ConnectError):
        return f"could not connect ({str(error) or 'connection refused'})"
    if isinstance(error, httpx2.TimeoutException):
        return "the server stopped answering (timed out)"
    if isinstance(error, McpResponseTooLarge):
        return str(error)
    if isinstance(error, httpx2.HTTPStatusError):
        return f"HTTP {error.response.status_code}"
    if isinstance(error, httpx2.HTTPError):
        return f"{type(error).__name__}: {error}"
    if isinstance(error, ValidationError):
        return "the server's answer is not a valid MCP message"
    if isinstance(error, ConnectionError | anyio.EndOfStream | anyio.BrokenResourceError | anyio.ClosedResourceError):
        return "the server closed the connection"
    if isinstance(error, OSError):
        return f"{error.strerror or error}"
    return f"{type(error).__name__}: {error}"


def _stderr_tail(stderr: Any) -> str:
    if stderr is None:
        return ""
    try:
        stderr.flush()
        stderr.seek(0)
        text = stderr.read()[-2000:]
    except (OSError, ValueError):
        return ""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


async def _with_session(
    resolved: ResolvedConnection,
    timeout: float,
    work: Callable[[Any, dict[str, str]], Awaitable[T]],
) -> T:
    """Run `work(client, phase)` in a session bounded by `timeout` seconds, turning every failure into
    McpUnavailable or McpToolError with a readable, redacted message. `phase["now"]` says how far the work got
    ("connect", "list", "call"), which decides whether a failure left a tool call's outcome unknown."""
    from mcp.shared.exceptions import MCPError

    where = f'The MCP server of connection "{resolved.name}"'
    phase = {"now": "connect"}
    # Closed in the finally below (a with block would wrap the whole function for an optional file).
    stderr = tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") if _is_stdio(resolved) else None  # noqa: SIM115
    try:
        with anyio.fail_after(timeout):
            async with _session(resolved, timeout, stderr) as client:
                phase["now"] = "list"
                return await work(client, phase)
    except (McpUnavailable, McpToolError) as refusal:
        raise _redacted(refusal, resolved) from None
    except Exception as failure:  # every failure is a reason, never a crash
        calling = phase["now"] == "call"
        leaves = _leaves(failure)
        ours = next((leaf for leaf in leaves if isinstance(leaf, McpUnavailable | McpToolError)), None)
        if isinstance(ours, McpUnavailable | McpToolError):
            raise _redacted(ours, resolved) from None
        known = next((leaf for leaf in leaves if isinstance(leaf, MCPError | TimeoutError)), None)
        error: BaseException = known or (leaves[0] if leaves else failure)
        if isinstance(error, TimeoutError):
            what = "the tool call" if calling else "the session"
            message = f"{where} did not finish {what} within {timeout:g} seconds."
            raise McpUnavailable(str(redact(message, _needles(resolved))), uncertain=calling) from None
        if isinstance(error, MCPError):
            first = (str(error.message).splitlines() or [""])[0][:200]
            if error.code == -32700:  # PARSE_ERROR: what came back is not JSON-RPC
                first = "its answer is not a JSON-RPC message"
            text = f"{first} (code {error.code})"
            if calling and error.code in _REFUSAL_CODES:
                raise McpToolError(str(redact(f"{where} refused the call: {text}", _needles(resolved)))) from None
            if phase["now"] == "connect":
                what = "the program an MCP server" if stderr is not None else "the URL an MCP endpoint"
                text = f"it did not complete the MCP handshake: {text}. Is {what}?"
            tail = _stderr_tail(stderr)
            if tail:
                text += f" The program said: {tail}"
            message = f"{where} failed: {text}"
            raise McpUnavailable(str(redact(message, _needles(resolved))), uncertain=calling) from None
        if isinstance(error, RuntimeError) and "structured content" in str(error):
            message = f"{where} answered outside the tool's schema: {error}"
            raise McpToolError(str(redact(message, _needles(resolved)))) from None
        detail = _describe(error)
        tail = _stderr_tail(stderr)
        if tail:
            detail += f"; the program said: {tail}"
        message = f"{where} could not be used: {detail}"
        # A connection that could not even be opened carried no call.
        sent = calling and not isinstance(error, httpx2.ConnectError | httpx2.ConnectTimeout)
        raise McpUnavailable(str(redact(message, _needles(resolved)))[:1000], uncertain=sent) from None
    finally:
        if stderr is not None:
            stderr.close()


def _redacted(error: McpUnavailable | McpToolError, resolved: ResolvedConnection) -> Exception:
    """`error` again, its message redacted (a message built from a server's words may quote a secret)."""
    message = str(redact(error.message, _needles(resolved)))
    if isinstance(error, McpUnavailable):
        return McpUnavailable(message, uncertain=error.uncertain)
    return McpToolError(message)


def _is_stdio(resolved: ResolvedConnection) -> bool:
    return resolved.config.get("transport") == "stdio"


async def _list_all(client: Any) -> list[McpTool]:
    tools: list[McpTool] = []
    cursor: str | None = None
    for _ in range(50):  # a server whose pages never end cannot hold the session
        page = await client.list_tools(cursor=cursor)
        for tool in page.tools:
            schema = tool.input_schema if isinstance(tool.input_schema, dict) else {"type": "object"}
            tools.append(McpTool(name=tool.name, description=tool.description or "", input_schema=dict(schema)))
        cursor = page.next_cursor
        if not cursor or len(tools) >= MAX_TOOLS:
            break
    return tools[:MAX_TOOLS]


def _result(result: Any, needles: list[str]) -> McpResult:
    parts: list[str] = []
    for block in result.content or []:
        kind = getattr(block, "type", "")
        if kind == "text":
            parts.append(str(block.text))
        elif kind == "resource" and hasattr(getattr(block, "resource", None), "text"):
            parts.append(str(block.resource.text))
        elif kind in ("image", "audio"):
            parts.append(f"[{kind}: {getattr(block, 'mime_type', '') or 'data'}]")
        elif kind == "resource_link":
            parts.append(f"[resource: {getattr(block, 'uri', '')}]")
    text = "\n".join(parts)
    if len(text) > MAX_TEXT_CHARS:
        text = text[:MAX_TEXT_CHARS] + f"\n[cut: the answer was longer than {MAX_TEXT_CHARS} characters]"
    data = result.structured_content
    try:
        data = json.loads(json.dumps(data, default=str)) if data is not None else None
    except (TypeError, ValueError):
        data = None
    return McpResult(text=str(redact(text, needles)), data=redact(data, needles), is_error=bool(result.is_error))


# --- the functions callers use ----------------------------------------------------------------------------------


async def amcp_tools_list(resolved: ResolvedConnection, *, timeout: float = LIST_TIMEOUT_SECONDS) -> list[McpTool]:
    """The tools the connection's MCP server offers (all pages, at most MAX_TOOLS). Raises McpUnavailable."""

    async def work(client: Any, phase: dict[str, str]) -> list[McpTool]:
        return await _list_all(client)

    return await _with_session(resolved, timeout, work)


async def amcp_tool_call(
    resolved: ResolvedConnection,
    tool: str,
    arguments: dict[str, Any],
    *,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    idempotency_key: str = "",
) -> McpResult:
    """Call `tool` with `arguments` on the connection's MCP server, `idempotency_key` in the request's `_meta`
    (IDEMPOTENCY_META_KEY). The tool is looked up first: one the server does not list raises McpToolError and
    nothing is called. Raises McpUnavailable (`uncertain` when the call was sent and no answer came) or
    McpToolError; a tool's own error is `McpResult.is_error`."""
    needles = _needles(resolved)

    async def work(client: Any, phase: dict[str, str]) -> McpResult:
        listed = await _list_all(client)
        if tool not in {item.name for item in listed}:
            names = ", ".join(item.name for item in listed[:20]) or "none"
            raise McpToolError(
                f'The MCP server of connection "{resolved.name}" has no tool "{tool}" (its tools: {names}).'
            )
        phase["now"] = "call"
        meta: Any = {IDEMPOTENCY_META_KEY: idempotency_key} if idempotency_key else None
        result = await client.call_tool(tool, arguments, read_timeout_seconds=timeout, meta=meta)
        return _result(result, needles)

    return await _with_session(resolved, timeout, work)


def mcp_tools_list(resolved: ResolvedConnection, *, timeout: float = LIST_TIMEOUT_SECONDS) -> list[McpTool]:
    """`amcp_tools_list` for synchronous callers (views, probes)."""
    return async_to_sync(amcp_tools_list)(resolved, timeout=timeout)


def mcp_tool_call(
    resolved: ResolvedConnection,
    tool: str,
    arguments: dict[str, Any],
    *,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    idempotency_key: str = "",
) -> McpResult:
    """`amcp_tool_call` for synchronous callers."""
    return async_to_sync(amcp_tool_call)(resolved, tool, arguments, timeout=timeout, idempotency_key=idempotency_key)


def mcp_tools_for_user(user: Any, connection_name: str) -> list[McpTool]:
    """The tools of MCP connection `connection_name` for the builder, when `user` may name it in a step
    (`connection_use_problem`): otherwise McpUnavailable with the reason, and no server is contacted. Listed
    tools are cached for a short while per connection and secrets version, so a form that renders twice does
    not start a program twice; a failure is remembered for a few seconds, so a server that is down does not hold
    every render for the listing's time limit. Raises McpUnavailable when the server cannot be listed."""
    from apps.connectors.models import Connection
    from apps.connectors.selectors import connection_use_problem

    problem = connection_use_problem(user, connection_name, kind=kinds.MCP)
    if problem:
        raise McpUnavailable(problem[0].upper() + problem[1:] + ".")
    connection = Connection.objects.get(name=connection_name)
    try:
        resolved = resolve(connection)
    except ApplicationError as error:
        raise McpUnavailable(
            f'The secrets of the connection "{connection_name}" cannot be read: {error.message}'
        ) from None
    key = f"{_TOOLS_CACHE_PREFIX}:{resolved.cache_key}"
    cached = cache.get(key)
    if isinstance(cached, list):
        return [McpTool(**item) for item in cached]
    if isinstance(cached, str):
        # A server that just failed is not waited for again on every render of the builder.
        raise McpUnavailable(cached)
    try:
        tools = mcp_tools_list(resolved)
    except (McpUnavailable, McpToolError) as error:
        cache.set(key, error.message, timeout=_FAILURE_CACHE_SECONDS)
        raise McpUnavailable(error.message) from None
    cache.set(key, [tool.as_dict() for tool in tools], timeout=_TOOLS_CACHE_SECONDS)
    return tools
