"""A small MCP server for the MCP client tests, built on the SDK: `echo` answers with what it received (its
arguments, the idempotency key from the request's `_meta`, and the Authorization and X-API-Key headers, so a
test can see they arrived, redacted), `fail` always reports a tool error, `total` returns structured content,
and `wait` answers after a while. Run as `python mcp_tool_server.py http PORT` (Streamable HTTP on 127.0.0.1)
or `... stdio`."""

from __future__ import annotations

import os
import sys
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel

server: MCPServer[Any] = MCPServer("aios-test-tools")


class Total(BaseModel):
    total: float
    count: int


@server.tool(description="Answer with the arguments and what the request carried.")
def echo(text: str, count: int = 1, ctx: Context | None = None) -> dict[str, Any]:
    meta = dict(ctx.request_context.meta or {}) if ctx is not None else {}
    headers = dict(ctx.headers or {}) if ctx is not None else {}
    return {
        "arguments": {"text": text, "count": count},
        "idempotency_key": meta.get("aios/idempotency_key"),
        "authorization": headers.get("authorization"),
        "x_api_key": headers.get("x-api-key"),
        "environment_has_secret": any("SECRET" in name or "DATABASE" in name for name in os.environ),
    }


@server.tool(description="Always refuses, with the reason given.")
def fail(reason: str) -> str:
    raise ToolError(f"refused: {reason}")


@server.tool(description="Add up the amounts.", structured_output=True)
def total(amounts: list[float]) -> Total:
    return Total(total=sum(amounts), count=len(amounts))


@server.tool(description="Wait, then answer.")
async def wait(seconds: float) -> str:
    import anyio

    await anyio.sleep(seconds)
    return f"waited {seconds} s"


if __name__ == "__main__":
    if sys.argv[1] == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
