"""OpenAI-compatible chat completions (`/v1/chat/completions`), mapped onto a generation as TGI maps them.

Requests that offer `tools` are answered as `tools.py` describes (scripted calls, a plain message, or TGI's
schema-shaped call of one tool).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from . import engine, protocol
from .engine import GenerateParameters, InferError
from .faults import early_fault, fault_from_header
from .jobs import Pacer, generate_once, prepare, record_success, token_events
from .responses import (
    ClientGone,
    DropConnection,
    drop_connection,
    dropped_stream,
    empty_response,
    error_response,
    json_response,
    openai_usage,
    stream_headers,
    unavailable_response,
)
from .scripts import Rule, wrong_tool_call_rule
from .state import DevServerState, state_of
from .tools import ToolCallReply, call_text, calls_in, not_enabled_body


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for chunk in content:
            if chunk.get("type") == "text":
                parts.append(chunk["text"])
            elif chunk.get("type") == "image_url":
                parts.append(f"![]({chunk['image_url']['url']})")
        return "".join(parts)
    return ""


def _message_text(message: dict[str, Any]) -> str:
    """A message as the "model" reads it and rules match it: its content, then one line per tool call."""
    lines = [call_text(call) for call in message.get("tool_calls") or ()]
    content = _content_text(message.get("content"))
    return "\n".join([content, *lines]) if content and lines else content or "\n".join(lines)


def _chat_template(messages: list[dict[str, Any]]) -> str:
    """A Zephyr-style template: what the "model" sees, and what input tokens are counted on."""
    rendered = "".join(f"<|{m['role']}|>\n{_message_text(m)}</s>\n" for m in messages)
    return rendered + "<|assistant|>\n"


@dataclass
class _ChatSetup:
    inputs: str
    params: GenerateParameters
    match_text: str
    tail_source: str
    model: str
    # Set when the reply is tool calls (scripted, or TGI's schema-shaped call of one tool).
    tool_reply: ToolCallReply | None


def _scripted_calls(
    state: DevServerState, rule: Rule, tools: list[dict[str, Any]], wanted: str | None, first_number: int
) -> ToolCallReply:
    """A rule's tool calls as the reply, once its names are checked against the offered tools."""
    assert rule.tool_calls is not None
    names = [tool["function"]["name"] for tool in tools]
    where = f"rule {json.dumps(rule.name, ensure_ascii=False)} of {rule.origin}"
    for call in rule.tool_calls:
        if call.name not in names:
            raise InferError.tool(f"Tool '{call.name}' not found in tool names (called by {where})")
        if wanted is not None and call.name != wanted:
            raise InferError.tool(f"Tool choice '{wanted}' is not the tool '{call.name}' that {where} calls")
    return ToolCallReply.from_script(state.config.tool_call_style, rule.response, rule.tool_calls, first_number)


def _chat_setup(state: DevServerState, body: dict[str, Any]) -> _ChatSetup:
    """Map a ChatRequest onto a generate request the way TGI's `try_into_generate` does."""
    messages = body["messages"]
    for message in messages:
        if message.get("content") is None and message.get("tool_calls") is None:
            raise InferError("template_error", "Template error: message has neither `content` nor `tool_calls`")
    match_text = "\n".join(_message_text(m) for m in messages)
    tools = body.get("tools")
    tool_choice = body.get("tool_choice")
    response_format = body.get("response_format")
    if tools is not None and response_format is not None:
        raise InferError.tool("Grammar and tools are mutually exclusive")
    tool_reply = None
    grammar = response_format
    rule = state.script.find(match_text, "chat")
    offered = bool(tools) and tool_choice != "none"
    if rule is not None and rule.tool_calls is not None and not offered:
        raise wrong_tool_call_rule(
            rule, 'the request\'s tool_choice is "none"' if tools else "the request offers no tools"
        )
    if tools and offered:
        wanted = None
        if isinstance(tool_choice, dict):
            wanted = (tool_choice.get("function") or {}).get("name")
        elif isinstance(tool_choice, str) and tool_choice not in ("auto", "required"):
            wanted = tool_choice
        candidates = [t for t in tools if wanted is None or t["function"]["name"] == wanted]
        if not candidates:
            raise InferError.tool(f"Tool choice '{wanted}' not found in tool names")
        plain_reply = rule is not None and (rule.has_json or rule.response is not None)
        if rule is not None and rule.tool_calls is not None:
            tool_reply = _scripted_calls(state, rule, tools, wanted, calls_in(messages))
            grammar = None
        elif plain_reply and tool_choice in (None, "auto"):
            # The "model" chose to answer instead of calling a tool: an ordinary message.
            grammar = None
        else:
            tool = candidates[0]
            tool_reply = ToolCallReply(
                style=state.config.tool_call_style,
                names=(tool["function"]["name"],),
                scripted=False,
                first_number=calls_in(messages),
            )
            arguments = tool["function"].get("arguments")
            schema = (
                arguments
                if isinstance(arguments, dict) and "properties" in arguments
                else {"type": "object", "properties": {}}
            )
            grammar = {"type": "json", "value": schema}

    temperature = body.get("temperature")
    # TGI: temperature 0 means greedy decoding; anything else samples.
    do_sample = not (temperature is not None and temperature == 0.0)
    presence = body.get("presence_penalty")
    model = body.get("model")
    params = GenerateParameters(
        max_new_tokens=body.get("max_tokens"),
        temperature=None if temperature == 0.0 else temperature,
        top_p=body.get("top_p"),
        repetition_penalty=None if presence is None else presence + 2.0,
        frequency_penalty=body.get("frequency_penalty"),
        do_sample=do_sample,
        seed=body.get("seed"),
        stop=list(body.get("stop") or []),
        details=True,
        top_n_tokens=body.get("top_logprobs"),
        grammar=grammar,
        return_full_text=False,
        adapter_id=model if model not in (None, "tgi") else None,
    )
    user_messages = [m for m in messages if m.get("role") == "user"]
    return _ChatSetup(
        inputs=_chat_template(messages),
        params=params,
        match_text=match_text,
        tail_source=_message_text(user_messages[-1] if user_messages else (messages[-1] if messages else {})),
        model=str(model) if model not in (None, "tgi") else state.config.model_id,
        tool_reply=tool_reply,
    )


def _chat_logprobs(token: engine.GenToken, top: list[engine.GenToken] | None) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": token.text,
                "logprob": token.logprob,
                "top_logprobs": [{"token": t.text, "logprob": t.logprob} for t in (top or [])],
            }
        ]
    }


async def chat_completions(request: Request, body: dict[str, Any]) -> Response:
    """`POST /v1/chat/completions`, streamed or not."""
    state = state_of(request)
    if state.config.no_tools and body.get("tools"):
        # Refused up front, as vLLM's OpenAI server validates the request before it reaches the engine.
        return json_response(not_enabled_body(), status=400)
    start = time.perf_counter()
    state.metrics.count("tgi_request_count")
    try:
        setup = _chat_setup(state, body)
    except InferError as err:
        # Template and tool errors happen before streaming starts: a real status code even for streams.
        state.metrics.fail(err.metric_label)
        return error_response(err)
    if early_fault(request, "chat", [setup.match_text]) == "unavailable":
        return unavailable_response()
    if body.get("stream"):
        return _chat_stream(request, body, setup, start)
    try:
        job = await generate_once(
            request,
            inputs=setup.inputs,
            params=setup.params,
            route="chat",
            match_text=setup.match_text,
            tail_source=setup.tail_source,
            start=start,
            tool_calls_allowed=setup.tool_reply is not None and setup.tool_reply.scripted,
        )
    except InferError as err:
        return error_response(err)
    except ClientGone:
        return empty_response(499)
    except DropConnection:
        return await drop_connection(request)
    plan = job.plan
    message: dict[str, Any]
    finish_reason = engine.chat_finish_reason(plan.finish_reason)
    if setup.tool_reply is not None:
        try:
            message = setup.tool_reply.message(plan.generated_text)
        except InferError as err:
            return error_response(err)
        finish_reason = setup.tool_reply.finish_reason(plan.finish_reason)
    else:
        message = {"role": "assistant", "content": plan.generated_text}
    logprobs = None
    if body.get("logprobs"):
        logprobs = {
            "content": [
                _chat_logprobs(t, plan.top_tokens[i] if plan.top_tokens else None)["content"][0]
                for i, t in enumerate(plan.tokens)
            ]
        }
    response = {
        "object": "chat.completion",
        "id": "",
        "created": int(time.time()),
        "model": setup.model,
        "system_fingerprint": state.system_fingerprint,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": logprobs,
                "finish_reason": finish_reason,
            }
        ],
        "usage": openai_usage(plan),
    }
    return json_response(response, headers=job.timings.headers(state.config, len(setup.inputs), plan))


def _chat_stream(request: Request, body: dict[str, Any], setup: _ChatSetup, start: float) -> Response:
    state = state_of(request)
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    want_logprobs = bool(body.get("logprobs"))
    header_fault = fault_from_header(request)

    def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None) -> bytes:
        return protocol.sse_event(
            {
                "object": "chat.completion.chunk",
                "id": "",
                "created": int(time.time()),
                "model": setup.model,
                "system_fingerprint": state.system_fingerprint,
                "choices": choices,
                "usage": usage,
            }
        )

    def error_event(err: InferError) -> bytes:
        # TGI's chat stream error shape differs from /generate_stream's and always says 422.
        return protocol.sse_event({"error": {"message": err.message, "http_status_code": 422}})

    async def stream() -> AsyncIterator[bytes]:
        permit = None if header_fault == "overloaded" else state.try_acquire()
        if permit is None:
            state.metrics.fail("overloaded")
            yield error_event(InferError.overloaded())
            yield protocol.SSE_DONE
            return
        pacer = Pacer(state.config)
        try:
            job = prepare(
                request,
                inputs=setup.inputs,
                params=setup.params,
                route="chat",
                match_text=setup.match_text,
                tail_source=setup.tail_source,
                streaming=True,
                start=start,
                tool_calls_allowed=setup.tool_reply is not None and setup.tool_reply.scripted,
            )
            plan = job.plan
            calls = setup.tool_reply.stream() if setup.tool_reply is not None else None
            async for item in token_events(job, pacer, state.scheduler):
                if isinstance(item, bytes):
                    yield item
                    continue
                index, token = item
                is_last = index == plan.generated_tokens
                finish = None
                if is_last:
                    finish = (
                        setup.tool_reply.finish_reason(plan.finish_reason)
                        if setup.tool_reply is not None
                        else engine.chat_finish_reason(plan.finish_reason)
                    )
                delta: dict[str, Any]
                if calls is not None:
                    delta = calls.delta(token)
                else:
                    delta = {"role": "assistant", "content": "" if token.special else token.text}
                logprobs = None
                if want_logprobs:
                    logprobs = _chat_logprobs(token, plan.top_tokens[index - 1] if plan.top_tokens else None)
                if is_last:
                    job.timings.end = time.perf_counter()
                pacer.sent()
                yield chunk([{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}], None)
            if include_usage:
                yield chunk([], openai_usage(plan))
            record_success(state, job)
        except InferError as err:
            state.metrics.fail(err.metric_label)
            yield error_event(err)
        except DropConnection:
            async for nothing in dropped_stream(request):
                yield nothing
            return
        finally:
            permit.release()
        yield protocol.SSE_DONE

    return StreamingResponse(stream(), headers=stream_headers(state.config, len(setup.inputs)))
