"""`mcp.call`: call one tool of an MCP server that an MCP connection names.

The tool's arguments are the step's `params`: the inputs mapped onto the step in the graph, or, when the step is
an `llm.agent` tool, the arguments the model chose. The step's idempotency key (stable across attempts) travels in
the request's `_meta` as "aios/idempotency_key", for servers that deduplicate. A tool may change the world, so
the step has side effects: the engine keeps an effect ledger for it, and replays reuse its recorded output.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from apps.connectors.mcp import McpToolError, McpUnavailable, amcp_tool_call
from apps.connectors.runtime import ConnectionUnavailable, connection_for_step
from apps.core.database import db_call
from apps.steps.base import StepConfig, StepContext, StepError, StepOutcome, StepType, Uses
from apps.steps.registry import register

TOOL_NAME_MAX = 128


class McpCallConfig(StepConfig):
    connection: str = Field(
        min_length=1,
        title="Connection",
        description="The MCP server: one of the MCP connections this workflow may use.",
        json_schema_extra={"x-widget": "connection-mcp"},
    )
    tool: str = Field(
        min_length=1,
        max_length=TOOL_NAME_MAX,
        title="Tool",
        description="The name of the server's tool to call (the connection's page lists them after a test). Its "
        "arguments are the step's mapped inputs.",
    )
    timeout_seconds: float = Field(
        30, gt=0, le=300, title="Time limit (seconds)", description="Longest wait for the server and the tool."
    )
    delivery: Literal["at_least_once", "at_most_once"] = Field(
        "at_least_once",
        title="Delivery",
        description="at_least_once: a call whose outcome is unknown (no answer came) is tried again with the same "
        "idempotency key. at_most_once: such a call goes to a person instead (for tools that cannot recognise a "
        "repeat).",
        json_schema_extra={"x-advanced": True},
    )


@register
class McpCall(StepType):
    """Calls `tool` on the connection's MCP server with `context.params` as its arguments.
    Output: `{"text": str, "data": structured content or None, "is_error": False}`: the tool's text content, and
    its structured content (None when it has none). A tool that reports an error fails the step with the tool's
    text, not retried (the same arguments would fail the same way); an unreachable server, a timeout or a broken
    answer fails it retryably. A tool the server does not have, or arguments it refuses, fail it without a retry."""

    slug = "mcp.call"
    name = "MCP tool"
    description = "Call a tool of an MCP server."
    Config = McpCallConfig
    category = "Connectors"
    queue = "connectors"
    side_effects = True
    replay_reuses_output = True

    @classmethod
    def uses(cls, config: McpCallConfig) -> list[Uses]:
        return [Uses("connection", config.connection, kind="mcp", field="connection")]

    @staticmethod
    def check_config(config: McpCallConfig) -> list[str]:
        if not config.tool.strip() or any(ord(character) < 32 for character in config.tool):
            return ["tool: give the name of one of the server's tools"]
        return []

    def simulate(self, config: McpCallConfig, context: StepContext) -> dict[str, Any]:  # type: ignore[override]
        # The call is described, never sent: a test run must not touch the outside world.
        return {
            "text": "",
            "data": None,
            "is_error": False,
            "simulated": True,
            "request": {"connection": config.connection, "tool": config.tool, "arguments": dict(context.params)},
        }

    async def aexecute(self, config: McpCallConfig, context: StepContext) -> StepOutcome:  # type: ignore[override]
        label = f'Step "{context.step_key}"'
        try:
            resolved = await db_call(
                connection_for_step, config.connection, kind="mcp", workflow_id=context.workflow_id
            )
        except ConnectionUnavailable as error:
            raise StepError(f"{label}: {error.message}") from None
        try:
            result = await amcp_tool_call(
                resolved,
                config.tool,
                dict(context.params or {}),
                timeout=config.timeout_seconds,
                idempotency_key=context.idempotency_key,
            )
        except McpToolError as error:
            raise StepError(f"{label}: {error.message}") from None
        except McpUnavailable as error:
            raise StepError(f"{label}: {error.message}", retryable=True, uncertain=error.uncertain) from None
        if result.is_error:
            text = result.text.strip() or "(the tool gave no reason)"
            raise StepError(f'{label}: the tool "{config.tool}" reported an error: {text[:2000]}')
        return StepOutcome(output={"text": result.text, "data": result.data, "is_error": False})
