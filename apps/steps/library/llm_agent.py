"""`llm.agent`: a model works toward a goal with tools, in a loop the engine makes durable.

One execution runs turns until the model asks for tool calls it may make: then the step parks, the engine makes
each call a recorded child step of the run (apps/runs/agent.py), and queues the step again once they have all
finished. The next execution rebuilds the conversation from the record (the model's turns and every call's
outcome) and goes on. So nothing here is kept in memory between turns, and a crash costs at most the model call
of the turn it interrupted: a recorded tool call is never made again.

Tool calling speaks the OpenAI-compatible `tools` API (TGI and vLLM serve it on the chat route). Where a server
has no tool calling ("auto" finds out from its refusal; "json" is chosen in the config), the reply is instead
constrained to JSON that names the tools to call or gives the answer. Each turn's model call is recorded under
its own key (`model_turn_key`), which is what a replay answers it from.

Arguments that do not fit a tool's schema, and tools that do not exist, go back to the model as that call's
error and are counted; the loop stops at the first limit it reaches (turns, tool calls, argument errors, tokens,
cost, wall time) with a step error naming it. Tool outputs reach the model masked like the prompt (when the step
masks personal data) and are scanned for injected instructions, which the step's usage reports.
"""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import jsonschema
from django.utils import timezone

from apps.core.database import db_call
from apps.inference.errors import InferenceError, InferenceValidationError
from apps.inference.gateway import NoRecording
from apps.steps.agent_config import TOOL_STEP_TYPES, AgentTool, LlmAgentConfig
from apps.steps.agent_keys import AGENT_WAIT, model_turn_key, tool_call_key
from apps.steps.base import AgentHistory, StepContext, StepError, StepOutcome, StepType, Uses, Wait
from apps.steps.guardrails import injection_flags_in
from apps.steps.library.llm_generate import schema_errors, schema_for_model, schema_problems
from apps.steps.llm import LlmSession, llm_config_problems
from apps.steps.registry import register, step_config_parse, step_type_find

# What a tool's output may take of the model's context: longer outputs are cut, and say so.
TOOL_RESULT_CHARS = 6000
ANSWER_SCHEMA_NAME = "answer"


def tool_result_text(record: Any) -> str:
    """What the model reads as a call's answer: its output as JSON, or its error."""
    if record.state == "succeeded":
        text = json.dumps(record.output, ensure_ascii=False, sort_keys=True, default=str)
    elif record.state == "cancelled":
        text = "Error: the call was cancelled."
    else:
        text = f"Error: {record.error or 'the call failed.'}"
    if len(text) > TOOL_RESULT_CHARS:
        text = f"{text[:TOOL_RESULT_CHARS]} … (cut: {len(text) - TOOL_RESULT_CHARS} more characters)"
    return text


def _is_number(value: str | None) -> bool:
    if value is None:
        return True
    try:
        return Decimal(value) >= 0
    except InvalidOperation:
        return False


@register
class LlmAgent(StepType):
    """A model that calls tools in a loop until it can answer.

    Output: `{"text": <final answer>, "turns": n, "tool_calls": m}`, plus `"data"` when `output` is data (the
    answer as JSON for `json_schema`, from one more constrained call). Every tool call is a child step of the
    run (`<key>~<n>`); the turns are in the step's transcript.
    """

    slug = "llm.agent"
    category = "AI"
    name = "Agent"
    description = "A model that uses tools in a loop to reach a goal; every call recorded, risky ones approved."
    Config = LlmAgentConfig
    queue = "inference"
    streams_tokens = True
    runs_agent_loop = True

    @staticmethod
    def check_config(config: LlmAgentConfig) -> list[str]:
        problems = llm_config_problems(config)
        if config.guardrails.on_injection == "review":
            problems.append(
                "guardrails.on_injection: an agent cannot hold its result for review; give the tools that act "
                "an approval (ask a person) or stop on injection"
            )
        if config.output == "data":
            problems += [
                p.replace("required", "required when output is data") for p in schema_problems(config.json_schema)
            ]
        if not _is_number(config.limits.max_cost):
            problems.append("limits.max_cost: must be an amount such as 0.50")
        seen: set[str] = set()
        for index, tool in enumerate(config.tools):
            label = f'tools[{index}] "{tool.name}"'
            if tool.name in seen:
                problems.append(f"{label}: another tool has this name")
            seen.add(tool.name)
            problems += [f"{label}: {problem}" for problem in tool_problems(tool)]
        return problems

    @classmethod
    def uses(cls, config: Any) -> list[Uses]:
        found: list[Uses] = []
        for tool in getattr(config, "tools", []):
            step_type = step_type_find(tool.step.type)
            if step_type is None:
                continue
            try:
                parsed = step_config_parse(step_type.slug, tool.step.config)
            except ValueError:
                continue
            found += [Uses(use.what, use.name, use.kind, f"tools.{tool.name}") for use in step_type.uses(parsed)]
        return found

    def simulate(self, config: LlmAgentConfig, context: StepContext) -> dict[str, Any]:  # type: ignore[override]
        return {"text": "", "turns": 0, "tool_calls": 0, "simulated": True}

    async def aexecute(self, config: LlmAgentConfig, context: StepContext) -> StepOutcome:  # type: ignore[override]
        return await AgentLoop(config, context).run()


def tool_problems(tool: AgentTool) -> list[str]:
    """What is wrong with one tool's definition that needs no database to see."""
    problems = []
    if tool.step.type not in TOOL_STEP_TYPES:
        problems.append(f"a tool cannot be a {tool.step.type} step (tools: {', '.join(TOOL_STEP_TYPES)})")
        return problems
    step_type = step_type_find(tool.step.type)
    if step_type is None:
        return [f"there is no step type {tool.step.type}"]
    try:
        parsed = step_config_parse(step_type.slug, tool.step.config)
    except ValueError as error:
        return [f"its {tool.step.type} settings are not valid: {error}"]
    problems += [f"its {tool.step.type} settings: {p}" for p in step_type.check_config(parsed)]
    if tool.step.type == "sql.query" and getattr(parsed, "mode", "read") != "read":
        problems.append("a SQL tool only reads: set its mode to read (a model never writes to a database)")
    if tool.parameters is None:
        if tool.step.type != "flow.subworkflow":
            problems.append("parameters: required (the JSON Schema of the arguments the model gives)")
    else:
        try:
            jsonschema.Draft202012Validator.check_schema(tool.parameters)
        except jsonschema.SchemaError as error:
            problems.append(f"parameters: not a valid JSON Schema: {error.message}")
        if tool.parameters.get("type") != "object":
            problems.append("parameters: must be an object schema")
    if tool.approval == "ask" and not tool.approval_queue:
        problems.append("approval_queue: required when a person approves each call")
    return problems


class AgentLoop:
    """One execution of an agent step (see the module docstring)."""

    def __init__(self, config: LlmAgentConfig, context: StepContext) -> None:
        self.config = config
        self.context = context
        self.history: AgentHistory = context.agent if context.agent is not None else AgentHistory()
        self.session = LlmSession(config, context)
        self.tools = {tool.name: tool for tool in config.tools}
        self.flags: set[str] = set()

    # -- the loop --

    async def run(self) -> StepOutcome:
        config, history = self.config, self.history
        system = await self.session.arender(config.system)
        goal = await self.session.arender(config.prompt)
        protocol = self._protocol()
        while True:
            turn = len(history.all_turns) + 1
            self._check_limits(turn)
            asked_at = timezone.now().isoformat()
            reply, protocol = await self._ask(turn, protocol, self._messages(system, goal, protocol))
            requests = self._requests(reply, protocol)
            entry: dict[str, Any] = {
                "turn": turn,
                "protocol": protocol,
                "text": self.session.finish_text(reply["text"]),
                "raw": reply["raw"],
                "requests": [],
                "calls": [],
                "errors": [],
                "finish": "tool_calls" if requests else "stop",
                "asked_at": asked_at,
                "at": timezone.now().isoformat(),
            }
            if turn == 1:
                entry["tool_parameters"] = history.tool_parameters
            history.new_turns.append(entry)
            if not requests:
                return await self._finish(entry, system, goal, protocol)
            calls = self._validate(entry, requests)
            if calls:
                return StepOutcome(
                    output={},
                    wait=Wait(
                        AGENT_WAIT,
                        details={"turn": turn, "calls": [call["key"] for call in calls]},
                        payload={"turns": history.new_turns, "calls": calls},
                    ),
                )
            # Every request was refused before it ran (a tool that does not exist, arguments that do not fit):
            # the errors are the answers, and the model tries again in this execution.

    def _protocol(self) -> str:
        if self.config.tool_protocol == "json" or not self.tools:
            return "json" if self.config.tool_protocol == "json" else "tools"
        turns = self.history.all_turns
        return str(turns[-1].get("protocol", "tools")) if turns else "tools"

    # -- limits --

    def _check_limits(self, turn: int, *, counts_turn: bool = True) -> None:
        limits, history = self.config.limits, self.history
        if counts_turn and turn > limits.max_turns:
            raise StepError(
                f'Step "{self.context.step_key}": the agent reached its limit of {limits.max_turns} turns without a '
                "final answer."
            )
        calls = self.context.model_calls
        tokens = history.tokens + sum(call.prompt_tokens + call.generated_tokens for call in calls)
        if limits.max_tokens is not None and tokens >= limits.max_tokens:
            raise StepError(
                f'Step "{self.context.step_key}": the agent used {tokens} tokens, its limit is {limits.max_tokens}.'
            )
        cost = Decimal(history.cost) + sum((call.cost for call in calls), Decimal(0))
        if limits.max_cost is not None and cost >= Decimal(limits.max_cost):
            raise StepError(
                f'Step "{self.context.step_key}": the agent\'s model calls cost {cost:.4f}, its limit is '
                f"{Decimal(limits.max_cost):.4f}."
            )
        turns = history.all_turns
        if limits.max_seconds is not None and turns:
            started = datetime.fromisoformat(str(turns[0]["asked_at"]))
            elapsed = (timezone.now() - started).total_seconds()
            if elapsed >= limits.max_seconds:
                raise StepError(
                    f'Step "{self.context.step_key}": the agent has been working for {elapsed:.0f} s, its limit is '
                    f"{limits.max_seconds:g} s."
                )

    def _counts(self) -> tuple[int, int]:
        turns = self.history.all_turns
        return sum(len(t.get("calls", [])) for t in turns), sum(len(t.get("errors", [])) for t in turns)

    # -- the conversation --

    def _tool_schema(self, tool: AgentTool) -> dict[str, Any]:
        parameters = tool.parameters
        if parameters is None:
            parameters = self.history.tool_parameters.get(tool.name) or {"type": "object", "properties": {}}
        return schema_for_model(parameters)

    def _tool_specs(self) -> list[dict[str, Any]]:
        return [
            {
                "type": "function",
                "function": {"name": tool.name, "description": tool.description, "parameters": self._tool_schema(tool)},
            }
            for tool in self.config.tools
        ]

    def _json_instructions(self) -> str:
        lines = [
            "You can use tools. Reply with JSON only: to call tools, "
            '{"tool_calls": [{"name": "<tool>", "arguments": {...}}]}; when you have the final answer, '
            '{"answer": "<your answer>"}. The tools:'
        ]
        for tool in self.config.tools:
            schema = json.dumps(self._tool_schema(tool), sort_keys=True)
            lines.append(f"- {tool.name}: {tool.description} Arguments (JSON Schema): {schema}")
        return "\n".join(lines)

    def _messages(self, system: str, goal: str, protocol: str) -> list[dict[str, Any]]:
        instructions = system
        if protocol == "json" and self.tools:
            instructions = f"{system}\n\n{self._json_instructions()}" if system else self._json_instructions()
        messages: list[dict[str, Any]] = [{"role": "system", "content": instructions}] if instructions else []
        messages.append({"role": "user", "content": goal})
        for turn in self.history.all_turns:
            messages += self._turn_messages(turn)
        return messages

    def _turn_messages(self, turn: dict[str, Any]) -> list[dict[str, Any]]:
        requests = turn.get("requests", [])
        answers = []
        for request in requests:
            if request.get("key"):
                record = self.history.calls.get(request["key"])
                text = tool_result_text(record) if record is not None else "Error: the call has no outcome."
            else:
                text = f"Error: {request.get('error', '')}"
            answers.append((request, self.session.mask(text)))
        self.flags.update(injection_flags_in([text for _, text in answers]))
        if turn.get("protocol") == "json":
            messages = [{"role": "assistant", "content": turn.get("raw") or ""}]
            if answers:
                lines = [f"[{req['call_id']}] {req['tool']}: {text}" for req, text in answers]
                messages.append({"role": "user", "content": "Tool results:\n" + "\n".join(lines)})
            return messages
        assistant: dict[str, Any] = {"role": "assistant", "content": turn.get("raw") or ""}
        if requests:
            assistant["tool_calls"] = [
                {
                    "id": req["call_id"],
                    "type": "function",
                    "function": {"name": req["tool"], "arguments": json.dumps(req["arguments"], sort_keys=True)},
                }
                for req in requests
            ]
        return [
            assistant,
            *({"role": "tool", "tool_call_id": req["call_id"], "content": text} for req, text in answers),
        ]

    # -- one model call --

    async def _ask(self, turn: int, protocol: str, messages: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
        """The model's reply to this turn as {"text", "raw", "tool_calls"}, and the protocol it came over (a
        server without tool calling moves an "auto" agent to JSON replies, for this turn and the next ones)."""
        try:
            return await self._call(turn, protocol, messages), protocol
        except (InferenceValidationError, NoRecording) as error:
            if protocol != "tools" or self.config.tool_protocol != "auto" or not _refuses_tools(error):
                raise StepError(f'Step "{self.context.step_key}": {error}', retryable=error.retryable) from None
        json_messages = messages
        if self.tools:
            # The same conversation, with the tools described in words instead of the API.
            json_messages = [dict(m) for m in messages]
            system = self._json_instructions()
            if json_messages and json_messages[0]["role"] == "system":
                json_messages[0]["content"] = f"{json_messages[0]['content']}\n\n{system}"
            else:
                json_messages.insert(0, {"role": "system", "content": system})
        return await self._call(turn, "json", json_messages), "json"

    async def _call(self, turn: int, protocol: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
        scope = self.session.gateway.scope
        scope.step_key = model_turn_key(self.context.step_key, turn) + ("j" if protocol == "json" else "")
        scope.asked = 0
        options: dict[str, Any] = {"messages": tuple(messages), "purpose": "agent"}
        if protocol == "tools" and self.tools:
            options.update(tools=tuple(self._tool_specs()), tool_choice="auto")
        elif protocol == "json" and self.tools:
            options["json_schema"] = self._reply_schema()
        request = self.session.request("", "", **options)
        if protocol == "json" or not self.tools:
            # A conversation without the tools API: InferenceValidationError and the rest are plain step errors.
            call = await self.session.acall(request)
        else:
            call = await self._acall_raw(request)
        result = call.result
        if protocol == "json" and self.tools:
            return _json_reply(result.text, self.context.step_key)
        return {
            "text": result.text,
            "raw": result.text,
            "tool_calls": [
                {"id": c.get("id") or f"call_{turn}_{i}", "name": c.get("name"), "arguments": c.get("arguments")}
                for i, c in enumerate(result.tool_calls, start=1)
            ],
        }

    async def _acall_raw(self, request: Any) -> Any:
        """A model call whose validation errors reach `_ask` (which may fall back to JSON replies)."""
        session = self.session
        chars = sum(len(str(m.get("content", ""))) for m in request.messages)
        endpoints = await db_call(session.endpoints, prompt_chars=chars)
        try:
            return await session.gateway.acall(request, endpoints)
        except (InferenceValidationError, NoRecording):
            raise
        except InferenceError as error:
            raise StepError(f'Step "{self.context.step_key}": {error}', retryable=error.retryable) from None
        finally:
            if session.stream:
                session.stream.close()

    def _reply_schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {
                "answer": {"type": "string"},
                "tool_calls": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string", "enum": list(self.tools)},
                            "arguments": {"type": "object"},
                        },
                        "required": ["name", "arguments"],
                    },
                },
            },
        }

    def _requests(self, reply: dict[str, Any], protocol: str) -> list[dict[str, Any]]:
        return [dict(call) for call in reply.get("tool_calls") or []]

    # -- tool calls --

    def _validate(self, entry: dict[str, Any], requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Check each request against its tool; fill the turn's requests, calls and errors; return the calls to
        make. Raises when a limit is reached."""
        limits = self.config.limits
        made, errors = self._counts()
        calls = []
        guard = self._guard()
        for index, request in enumerate(requests, start=1):
            call_id = str(request.get("id") or f"call_{entry['turn']}_{index}")
            name, arguments = request.get("name"), request.get("arguments")
            record: dict[str, Any] = {"call_id": call_id, "tool": str(name), "arguments": arguments}
            problem = self._argument_problem(name, arguments)
            if problem:
                record["error"] = problem
                entry["errors"].append(dict(record))
                entry["requests"].append(record)
                errors += 1
                continue
            tool = self.tools[str(name)]
            if self.session.vault is not None:  # the model saw placeholders; the tool gets the real values
                arguments = self.session.vault.restore_value(arguments)
            made += 1
            key = tool_call_key(self.context.step_key, made)
            record["key"] = key
            entry["requests"].append(record)
            entry["calls"].append(key)
            calls.append(
                {
                    "key": key,
                    "type": tool.step.type,
                    "config": tool.step.config,
                    "tool": tool.name,
                    "call_id": call_id,
                    "turn": entry["turn"],
                    "arguments": arguments,
                    "approval": guard[0] if guard and tool.approval == "run" else tool.approval,
                    "approval_queue": guard[1] if guard and tool.approval == "run" else tool.approval_queue,
                    "parameters": self._tool_schema(tool),
                }
            )
        if errors > limits.max_argument_errors:
            last = entry["errors"][-1]["error"] if entry["errors"] else ""
            raise StepError(
                f'Step "{self.context.step_key}": the model asked for tool calls that did not fit their tools '
                f"{errors} times, its limit is {limits.max_argument_errors}. The last: {last}"
            )
        if made > limits.max_tool_calls:
            raise StepError(
                f'Step "{self.context.step_key}": the agent asked for its {made}th tool call, its limit is '
                f"{limits.max_tool_calls}."
            )
        return calls

    def _guard(self) -> tuple[str, str] | None:
        """After a tool output that looks like instructions aimed at the model: the approval every later call
        needs (ask: the review queue, or the initiator's confirmation without one), or a stop."""
        if not self.flags or self.config.suspicious_tool_output == "continue":
            return None
        flags = ", ".join(sorted(self.flags))
        if self.config.suspicious_tool_output == "stop":
            raise StepError(
                f'Step "{self.context.step_key}": a tool\'s output looks like instructions aimed at the model '
                f"({flags}); the agent stopped before acting on it."
            )
        if self.config.review_queue:
            return "ask", self.config.review_queue
        if self.context.initiator_id is None:  # nobody could confirm: stopping is the safe answer
            raise StepError(
                f'Step "{self.context.step_key}": a tool\'s output looks like instructions aimed at the model '
                f"({flags}), and with no review queue and nobody who started the run, nobody can approve its next "
                "calls; the agent stopped."
            )
        return "confirm", ""

    def _argument_problem(self, name: Any, arguments: Any) -> str | None:
        if not isinstance(name, str) or name not in self.tools:
            known = ", ".join(self.tools) or "none"
            return f"there is no tool named {name!r} (the tools: {known})."
        if not isinstance(arguments, dict):
            return f"the arguments of {name} must be a JSON object, not {type(arguments).__name__}."
        schema = self._tool_schema(self.tools[name])
        problems = schema_errors(arguments, schema)
        if problems:
            return f"the arguments do not fit {name}: {'; '.join(problems)}."
        return None

    # -- the answer --

    async def _finish(self, entry: dict[str, Any], system: str, goal: str, protocol: str) -> StepOutcome:
        config = self.config
        made, errors = self._counts()
        output: dict[str, Any] = {"text": entry["text"], "turns": len(self.history.all_turns), "tool_calls": made}
        if config.output == "data" and config.json_schema:
            turn = len(self.history.all_turns) + 1
            self._check_limits(turn, counts_turn=False)  # the answer is given; this only shapes it
            messages = self._messages(system, goal, protocol)
            messages.append({"role": "user", "content": "Give the final answer now as JSON for the requested fields."})
            scope = self.session.gateway.scope
            scope.step_key, scope.asked = model_turn_key(self.context.step_key, turn), 0
            request = self.session.request(
                "", "", messages=tuple(messages), json_schema=config.json_schema, purpose="agent"
            )
            call = await self.session.acall(request)
            try:
                data = json.loads(call.result.text)
            except json.JSONDecodeError as error:
                raise StepError(
                    f'Step "{self.context.step_key}": the final answer is not valid JSON ({error.msg}).'
                ) from None
            problems = schema_errors(data, config.json_schema)
            if problems:
                raise StepError(
                    f'Step "{self.context.step_key}": the final answer does not match the fields: '
                    f"{'; '.join(problems)}."
                )
            self.history.new_turns.append(
                {
                    "turn": turn,
                    "protocol": "data",
                    "text": "",
                    "raw": call.result.text,
                    "requests": [],
                    "calls": [],
                    "errors": [],
                    "finish": "data",
                    "asked_at": entry["at"],
                    "at": timezone.now().isoformat(),
                }
            )
            output["data"] = self.session.finish_value(data)
            output["turns"] = len(self.history.all_turns)
        usage = self.session.usage(
            tool_calls=made, argument_errors=errors, turns=output["turns"], tool_output_flags=sorted(self.flags)
        )
        # The step's totals are over every execution of it, not only this one.
        usage["agent_tokens"] = self.history.tokens + usage["prompt_tokens"] + usage["generated_tokens"]
        usage["agent_cost"] = str(Decimal(self.history.cost) + Decimal(usage["cost"]))
        return StepOutcome(output=output, usage=usage)


def _refuses_tools(error: InferenceError) -> bool:
    """Whether the server said it has no tool calling (vLLM without --enable-auto-tool-choice answers 400), or,
    replaying, the original run's agent had found so (its turn was recorded as a JSON reply)."""
    if isinstance(error, NoRecording):
        # Replaying: the original asked this turn in JSON only if its tools call has no recording at all (a
        # recording that answers another request is a real difference, reported as such).
        return "there is no recording of" in error.message
    words = f"{error.server_message or ''} {error.message}".lower()
    return "tool" in words


def _json_reply(text: str, step_key: str) -> dict[str, Any]:
    """A JSON-protocol reply as {"text", "raw", "tool_calls"}."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise StepError(
            f'Step "{step_key}": the model\'s reply is not the JSON it was asked for ({error.msg}).'
        ) from None
    if not isinstance(data, dict):
        raise StepError(f'Step "{step_key}": the model\'s reply is not a JSON object.')
    calls = data.get("tool_calls") or []
    if not isinstance(calls, list):
        calls = []
    return {
        "text": str(data.get("answer") or ""),
        "raw": text,
        "tool_calls": [
            {"id": None, "name": call.get("name"), "arguments": call.get("arguments")}
            for call in calls
            if isinstance(call, dict)
        ],
    }
