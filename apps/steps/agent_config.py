"""The `llm.agent` step's configuration: its goal, its tools, its limits and its output.

A tool is a step of the library that the model may ask to run: `step` names its type and config exactly as a
graph step does, and the model's arguments reach it as `params` (so an `http.request` body field reads
`{{ params.claim_id }}`, and a `flow.subworkflow` tool hands them to the child run as its input). Every call is
a recorded child step of the run, with the engine's claim, lease, fencing, effect ledger and idempotency key.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from apps.steps.llm import LlmStepConfig

TOOL_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
# The step types a tool may be: what reads, calls out or runs a published workflow. Flow control, people and
# another agent are not tools (an approval is a tool's policy, not a tool).
TOOL_STEP_TYPES = (
    "flow.subworkflow",
    "http.request",
    "sql.query",
    "email.send",
    "rag.retrieve",
    "mcp.call",
    "data.transform",
    "assistant.lookup",
)


class ToolStep(BaseModel):
    """The step a tool runs: a step type of the library and its config, as in a graph."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(min_length=1, description="The step type the tool runs.")
    config: dict[str, Any] = Field(default_factory=dict, description="That step type's settings.")


class AgentTool(BaseModel):
    """One tool the agent may call."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="What the model calls it: letters, digits, _ and -, starting with a letter.")
    description: str = Field(
        min_length=1, max_length=1000, description="What it does and when to use it, for the model."
    )
    step: ToolStep
    parameters: dict[str, Any] | None = Field(
        None,
        description="The JSON Schema of the arguments. Empty for a workflow tool: its input schema is used.",
        json_schema_extra={"x-widget": "schema-table"},
    )
    approval: Literal["run", "ask", "confirm"] = Field(
        "run",
        description="run: call it at once; ask: a person approves each call first, in the inbox; confirm: the "
        "person who started the run confirms each call (a chat assistant asks in the conversation).",
    )
    approval_queue: str = Field("", description="The approval queue that decides calls when approval is ask.")

    @field_validator("name")
    @classmethod
    def _tool_name(cls, value: str) -> str:
        if not TOOL_NAME.match(value):
            raise ValueError("use letters, digits, _ and -, starting with a letter (at most 64)")
        return value


class AgentLimits(BaseModel):
    """Where the loop stops. Hitting one fails the step with the limit it hit; the run and its records stay."""

    model_config = ConfigDict(extra="forbid")

    max_turns: int = Field(8, ge=1, le=100, description="Model replies, at most.")
    max_tool_calls: int = Field(20, ge=0, le=500, description="Tool calls, at most.")
    max_argument_errors: int = Field(
        3, ge=0, le=50, description="Calls with arguments that do not fit the tool, at most."
    )
    max_tokens: int | None = Field(None, ge=1, description="Prompt and generated tokens of the step, at most.")
    max_cost: str | None = Field(None, description="Model cost of the step, at most (a decimal amount).")
    max_seconds: float | None = Field(
        None, gt=0, le=7 * 86400, description="Wall time from the first model call, at most (waits included)."
    )


class LlmAgentConfig(LlmStepConfig):
    """`prompt` is the goal (a template); `system` the agent's standing instructions."""

    tools: list[AgentTool] = Field(default_factory=list, max_length=32, description="What the agent may use.")
    limits: AgentLimits = Field(default_factory=AgentLimits)
    output: Literal["text", "data"] = Field("text", description="text, or data for json_schema.")
    json_schema: dict[str, Any] | None = Field(
        None,
        title="Answer fields",
        description="Required when output is data: the fields of the final answer.",
        json_schema_extra={"x-widget": "schema-table"},
    )
    suspicious_tool_output: Literal["continue", "ask", "stop"] = Field(
        "ask",
        description="When a tool's output looks like instructions aimed at the model (a prompt injection): "
        "continue (only flag it), ask (every later tool call waits for a person: in review_queue, or, without "
        "one, the person who started the run confirms), or stop the step.",
        json_schema_extra={"x-advanced": True},
    )
    review_queue: str = Field(
        "",
        description="The approval queue that decides tool calls after a suspicious tool output.",
        json_schema_extra={"x-advanced": True, "x-widget": "approval-queue"},
    )
    tool_protocol: Literal["auto", "tools", "json"] = Field(
        "auto",
        description="tools: the server's tool-calling API; json: a JSON-constrained reply naming the tool; "
        "auto: tools, and json where the server has no tool calling.",
        json_schema_extra={"x-advanced": True},
    )
