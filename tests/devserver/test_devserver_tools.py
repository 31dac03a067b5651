"""Scripted tool calls on the development server: what a test scripts is what the "model" calls.

Each style (`tgi`, `openai`) runs in a thread-local server of its own with the rules below; the client tests
go through `apps.inference.client` (`achat`, `achat_stream`) so the shapes are checked where they are read.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from apps.inference import client
from apps.inference.errors import InferenceValidationError
from devserver import DevServerConfig, Script, ScriptError
from devserver.config import config_from_args
from devserver.scripts import ToolCall, tool_call_pieces
from tests.support.devserver import REPO_ROOT, scripted_server, write_script

Parse = Callable[[bytes], list[Any]]

LOOKUP_ARGUMENTS = {"claim_id": "C-7", "fields": ["policy", "amount"]}
NOTIFY_ARGUMENTS = {"to": "Rita Müller", "urgent": True}
CONTENT = "Looking that up."

RULES: list[dict[str, Any]] = [
    # An agent's loop, latest turn first (see scripts.py): answer once both results are in the conversation,
    # call `policy` once the lookup's result is, else call `lookup`.
    {"name": "loop: answer", "match": {"contains": ["Triage claim C-7", "RESULT-B"]}, "response": "C-7 is covered."},
    {
        "name": "loop: second call",
        "match": {"contains": ["Triage claim C-7", "RESULT-A"]},
        "response": {"tool_calls": [{"name": "policy", "arguments": {"claim_id": "C-7"}}]},
    },
    {
        "name": "loop: first call",
        "match": {"contains": "Triage claim C-7"},
        "response": {"tool_calls": [{"name": "lookup", "arguments": {"claim_id": "C-7"}}]},
    },
    {
        "name": "two calls",
        "match": {"contains": "TWO-CALLS"},
        "response": {
            "tool_calls": [
                {"name": "lookup", "arguments": LOOKUP_ARGUMENTS},
                {"name": "notify", "arguments": NOTIFY_ARGUMENTS},
            ],
            "content": CONTENT,
        },
    },
    {"name": "no arguments", "match": {"contains": "NO-ARGS"}, "response": {"tool_calls": [{"name": "notify"}]}},
    {
        "name": "unknown tool",
        "match": {"contains": "UNKNOWN-TOOL"},
        "response": {"tool_calls": [{"name": "launch_rocket", "arguments": {}}]},
    },
    {"name": "plain text", "match": {"contains": "PLAIN-TEXT"}, "response": "No tool needed: the claim is closed."},
    {"name": "plain json", "match": {"contains": "PLAIN-JSON"}, "response": {"json": {"claim_id": "C-9"}}},
    {
        "name": "calls, then a fault",
        "match": {"contains": "FAULTY-CALLS"},
        "response": {"tool_calls": [{"name": "lookup", "arguments": LOOKUP_ARGUMENTS}]},
        "fault": "midstream",
        "fault_after_tokens": 3,
    },
]

LOOKUP_PARAMETERS = {
    "type": "object",
    "properties": {"claim_id": {"type": "string"}, "fields": {"type": "array", "items": {"type": "string"}}},
    "required": ["claim_id"],
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "lookup", "description": "Find a claim", "parameters": LOOKUP_PARAMETERS},
    },
    {
        "type": "function",
        "function": {
            "name": "notify",
            "description": "Tell a person",
            "parameters": {"type": "object", "properties": {"to": {"type": "string"}, "urgent": {"type": "boolean"}}},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "policy",
            "parameters": {"type": "object", "properties": {"claim_id": {"type": "string"}}},
        },
    },
]


@pytest.fixture(scope="module")
def tgi_url() -> Iterator[str]:
    with scripted_server(RULES) as url:
        yield url


@pytest.fixture(scope="module")
def openai_url() -> Iterator[str]:
    with scripted_server(RULES, tool_call_style="openai") as url:
        yield url


@pytest.fixture(scope="module")
def no_tools_url() -> Iterator[str]:
    with scripted_server(RULES, no_tools=True) as url:
        yield url


@pytest.fixture(params=["tgi", "openai"])
def style_url(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(style, base URL) for each wire style."""
    style: str = request.param
    return style, request.getfixturevalue(f"{style}_url")


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def chat(base_url: str, messages: list[dict[str, Any]], **extra: Any) -> httpx2.Response:
    body = {"messages": messages, "max_tokens": 200, **extra}
    return httpx2.post(base_url + "/v1/chat/completions", json=body, timeout=10)


def chat_stream(base_url: str, messages: list[dict[str, Any]], parse: Parse, **extra: Any) -> list[Any]:
    body = {"messages": messages, "max_tokens": 200, "stream": True, **extra}
    with httpx2.stream("POST", base_url + "/v1/chat/completions", json=body, timeout=10) as response:
        raw = response.read()
        assert response.status_code == 200, raw
    return parse(raw)


def arguments_of(style: str, call: dict[str, Any]) -> Any:
    arguments = call["function"]["arguments"]
    if style == "openai":
        assert isinstance(arguments, str), "vLLM sends arguments as a JSON string"
        return json.loads(arguments)
    assert isinstance(arguments, dict), "TGI sends arguments as a JSON object"
    return arguments


def expected_completion_tokens(content: str | None, *calls: tuple[str, dict[str, Any]]) -> int:
    pieces = tool_call_pieces(content, tuple(ToolCall(name, arguments) for name, arguments in calls))
    return len(pieces) + 1  # and the end-of-text token


# --------------------------------------------------------------------------------------------------
# Non-stream replies


def test_scripted_calls_are_the_reply_tgi_style(tgi_url: str) -> None:
    response = chat(tgi_url, user("Please TWO-CALLS now"), tools=TOOLS)
    assert response.status_code == 200, response.text
    body = response.json()
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert list(message) == ["role", "content", "tool_calls"]
    assert message["content"] == CONTENT
    assert message["tool_calls"] == [
        {"id": "0", "type": "function", "function": {"name": "lookup", "arguments": LOOKUP_ARGUMENTS}},
        {"id": "1", "type": "function", "function": {"name": "notify", "arguments": NOTIFY_ARGUMENTS}},
    ]
    usage = body["usage"]
    assert usage["completion_tokens"] == expected_completion_tokens(
        CONTENT, ("lookup", LOOKUP_ARGUMENTS), ("notify", NOTIFY_ARGUMENTS)
    )
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_scripted_calls_are_the_reply_openai_style(openai_url: str) -> None:
    response = chat(openai_url, user("Please TWO-CALLS now"), tools=TOOLS, tool_choice="auto")
    assert response.status_code == 200, response.text
    (choice,) = response.json()["choices"]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] == CONTENT
    calls = message["tool_calls"]
    assert [(c["id"], c["type"], c["function"]["name"]) for c in calls] == [
        ("call_0", "function", "lookup"),
        ("call_1", "function", "notify"),
    ]
    assert calls[0]["function"]["arguments"] == json.dumps(LOOKUP_ARGUMENTS, ensure_ascii=False)
    assert json.loads(calls[1]["function"]["arguments"]) == NOTIFY_ARGUMENTS


def test_a_call_without_arguments_gets_an_empty_object(style_url: tuple[str, str]) -> None:
    style, url = style_url
    message = chat(url, user("NO-ARGS"), tools=TOOLS).json()["choices"][0]["message"]
    assert [(c["function"]["name"], arguments_of(style, c)) for c in message["tool_calls"]] == [("notify", {})]
    if style == "tgi":
        assert "content" not in message, "TGI's tool-call message has no content"
    else:
        assert message["content"] is None, "OpenAI's tool-call message says content null"


def test_openai_ids_go_on_from_the_calls_already_in_the_conversation(openai_url: str) -> None:
    earlier = [
        {"id": "call_0", "type": "function", "function": {"name": "lookup", "arguments": "{}"}},
        {"id": "call_1", "type": "function", "function": {"name": "notify", "arguments": "{}"}},
    ]
    messages = [
        *user("First a lookup"),
        {"role": "assistant", "content": None, "tool_calls": earlier},
        {"role": "tool", "tool_call_id": "call_0", "content": "nothing"},
        {"role": "tool", "tool_call_id": "call_1", "content": "sent"},
        *user("TWO-CALLS again"),
    ]
    response = chat(openai_url, messages, tools=TOOLS)
    assert response.status_code == 200, response.text
    ids = [c["id"] for c in response.json()["choices"][0]["message"]["tool_calls"]]
    assert ids == ["call_2", "call_3"]


@pytest.mark.parametrize("tool_choice", ["auto", None])
def test_a_plain_reply_while_tools_are_offered_is_an_answer(
    style_url: tuple[str, str], tool_choice: str | None
) -> None:
    _, url = style_url
    extra = {"tool_choice": tool_choice} if tool_choice else {}
    for prompt, expected in (
        ("PLAIN-TEXT", "No tool needed: the claim is closed."),
        ("PLAIN-JSON", '{"claim_id": "C-9"}'),
    ):
        (choice,) = chat(url, user(prompt), tools=TOOLS, **extra).json()["choices"]
        assert choice["message"] == {"role": "assistant", "content": expected}
        assert choice["finish_reason"] == "stop"


def test_required_and_named_choices_keep_the_schema_shaped_call(style_url: tuple[str, str]) -> None:
    style, url = style_url
    # A plain JSON rule that fits the tool's parameters becomes that tool's arguments, as before.
    (choice,) = chat(url, user("PLAIN-JSON"), tools=TOOLS, tool_choice="required").json()["choices"]
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "lookup"
    assert arguments_of(style, call) == {"claim_id": "C-9"}
    assert call["id"] == ("0" if style == "tgi" else "call_0")
    assert choice["finish_reason"] == ("stop" if style == "tgi" else "tool_calls")
    named = {"type": "function", "function": {"name": "notify"}}
    (choice,) = chat(url, user("PLAIN-TEXT"), tools=TOOLS, tool_choice=named).json()["choices"]
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "notify"
    assert isinstance(arguments_of(style, call), dict)


def test_no_rule_with_tools_keeps_the_schema_shaped_call_of_the_first_tool(tgi_url: str) -> None:
    (choice,) = chat(tgi_url, user("Nothing scripted here"), tools=TOOLS).json()["choices"]
    assert choice["finish_reason"] == "stop"
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "lookup"
    assert isinstance(call["function"]["arguments"]["claim_id"], str)


def test_a_reply_cut_by_max_tokens(style_url: tuple[str, str]) -> None:
    style, url = style_url
    response = chat(url, user("TWO-CALLS"), tools=TOOLS, max_tokens=6)
    if style == "tgi":
        # TGI cannot parse a cut call's arguments and says so.
        assert response.status_code == 422
        assert response.json()["error_type"] == "tool_error"
        assert response.json()["error"].startswith("Tool error: Failed to parse generated text")
        return
    (choice,) = response.json()["choices"]
    assert choice["finish_reason"] == "length"
    (call,) = choice["message"]["tool_calls"]
    assert json.dumps(LOOKUP_ARGUMENTS).startswith(call["function"]["arguments"])
    assert choice["message"]["content"] == CONTENT


# --------------------------------------------------------------------------------------------------
# Errors: an unknown tool, and a script that does not fit the request


@pytest.mark.parametrize("stream", [False, True])
def test_an_unknown_tool_is_a_tool_error(tgi_url: str, stream: bool) -> None:
    response = chat(tgi_url, user("UNKNOWN-TOOL"), tools=TOOLS, stream=stream)
    assert response.status_code == 422, "tool errors come before a stream starts"
    body = response.json()
    assert body["error_type"] == "tool_error"
    assert body["error"].startswith("Tool error: Tool 'launch_rocket' not found in tool names")
    assert '"unknown tool"' in body["error"], "the message names the rule"


def test_a_named_choice_the_rule_does_not_call_is_a_tool_error(tgi_url: str) -> None:
    named = {"type": "function", "function": {"name": "notify"}}
    response = chat(tgi_url, user("Triage claim C-7"), tools=TOOLS, tool_choice=named)
    assert response.status_code == 422
    assert response.json()["error"] == (
        "Tool error: Tool choice 'notify' is not the tool 'lookup' that rule \"loop: first call\" of "
        "<scripted_server> calls"
    )


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ({}, "the request offers no tools"),
        ({"tools": []}, "the request offers no tools"),
        ({"tools": TOOLS, "tool_choice": "none"}, 'the request\'s tool_choice is "none"'),
    ],
)
def test_a_tool_call_rule_without_tools_is_a_script_error(
    tgi_url: str, stream: bool, extra: dict[str, Any], why: str
) -> None:
    response = chat(tgi_url, user("TWO-CALLS"), stream=stream, **extra)
    assert response.status_code == 422
    assert response.json() == {
        "error": f'Script error (AIOS development server): rule "two calls" of <scripted_server> answers with '
        f"tool calls, but {why}",
        "error_type": "script_error",
    }


def test_a_tool_call_rule_on_the_generate_routes_is_a_script_error(tgi_url: str, parse_sse: Parse) -> None:
    for path, body in (
        ("/generate", {"inputs": "TWO-CALLS"}),
        ("/v1/completions", {"prompt": "TWO-CALLS", "max_tokens": 20}),
    ):
        response = httpx2.post(tgi_url + path, json=body, timeout=10)
        assert response.status_code == 422, path
        assert response.json()["error_type"] == "script_error", path
        assert (
            "answers with tool calls, but tool calls are answered on /v1/chat/completions only"
            in (response.json()["error"])
        )
    with httpx2.stream("POST", tgi_url + "/generate_stream", json={"inputs": "TWO-CALLS"}, timeout=10) as response:
        events = parse_sse(response.read())
    assert events[-1]["error_type"] == "script_error", "on an open stream the error comes in-band, as TGI's do"
    # The server is unharmed.
    assert httpx2.post(tgi_url + "/generate", json={"inputs": "hello"}, timeout=10).status_code == 200


# --------------------------------------------------------------------------------------------------
# Streams


def _deltas(events: list[Any]) -> tuple[list[dict[str, Any]], list[str | None], dict[str, Any]]:
    assert events[-1] == "[DONE]"
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] is not None
    chunks = events[:-2]
    return (
        [c["choices"][0]["delta"] for c in chunks],
        [c["choices"][0]["finish_reason"] for c in chunks],
        usage_chunk["usage"],
    )


def test_streamed_calls_tgi_style(tgi_url: str, parse_sse: Parse) -> None:
    events = chat_stream(tgi_url, user("TWO-CALLS"), parse_sse, tools=TOOLS, stream_options={"include_usage": True})
    deltas, finishes, usage = _deltas(events)
    assert finishes[-1] == "tool_calls" and set(finishes[:-1]) == {None}
    assert all(d["role"] == "assistant" for d in deltas), "TGI repeats the role in every delta"
    assert "".join(d.get("content") or "" for d in deltas) == CONTENT
    fragments = [f for d in deltas for f in d.get("tool_calls") or ()]
    assert {(f["index"], f["id"], f["type"]) for f in fragments} == {(0, "0", "function"), (1, "1", "function")}
    for index, name, arguments in ((0, "lookup", LOOKUP_ARGUMENTS), (1, "notify", NOTIFY_ARGUMENTS)):
        own = [f for f in fragments if f["index"] == index]
        assert [f["function"]["name"] for f in own] == [name] + [None] * (len(own) - 1), "the name comes once, first"
        assert json.loads("".join(f["function"]["arguments"] for f in own)) == arguments
        assert len(own) > 2, "arguments come in fragments"
    assert (
        usage["completion_tokens"]
        == len(deltas)
        == expected_completion_tokens(CONTENT, ("lookup", LOOKUP_ARGUMENTS), ("notify", NOTIFY_ARGUMENTS))
    )


def test_streamed_calls_openai_style(openai_url: str, parse_sse: Parse) -> None:
    events = chat_stream(openai_url, user("TWO-CALLS"), parse_sse, tools=TOOLS, stream_options={"include_usage": True})
    deltas, finishes, usage = _deltas(events)
    assert finishes[-1] == "tool_calls"
    assert deltas[0]["role"] == "assistant" and all("role" not in d for d in deltas[1:]), "the role comes once"
    assert deltas[-1] == {}, "the end-of-text token adds nothing"
    assert "".join(d.get("content") or "" for d in deltas) == CONTENT
    fragments = [f for d in deltas for f in d.get("tool_calls") or ()]
    for index, name, arguments in ((0, "lookup", LOOKUP_ARGUMENTS), (1, "notify", NOTIFY_ARGUMENTS)):
        first, *rest = [f for f in fragments if f["index"] == index]
        assert (first["id"], first["type"], first["function"]["name"]) == (f"call_{index}", "function", name)
        assert rest and all(f == {"index": index, "function": {"arguments": f["function"]["arguments"]}} for f in rest)
        text = first["function"]["arguments"] + "".join(f["function"]["arguments"] for f in rest)
        assert text == json.dumps(arguments, ensure_ascii=False)
    assert usage["completion_tokens"] == len(deltas)


def test_a_streamed_plain_reply_while_tools_are_offered(style_url: tuple[str, str], parse_sse: Parse) -> None:
    _, url = style_url
    events = chat_stream(url, user("PLAIN-TEXT"), parse_sse, tools=TOOLS, stream_options={"include_usage": True})
    deltas, finishes, _ = _deltas(events)
    assert finishes[-1] == "stop"
    assert not any("tool_calls" in d for d in deltas)
    assert "".join(d["content"] for d in deltas) == "No tool needed: the claim is closed."


def test_a_fault_cuts_streamed_calls(tgi_url: str, parse_sse: Parse) -> None:
    events = chat_stream(tgi_url, user("FAULTY-CALLS"), parse_sse, tools=TOOLS)
    assert events[-1] == "[DONE]"
    assert "error" in events[-2]
    assert [len(e["choices"][0]["delta"]["tool_calls"]) for e in events[:-2]] == [1, 1, 1]


# --------------------------------------------------------------------------------------------------
# Through the product's inference client


@pytest.mark.parametrize("streamed", [False, True], ids=["achat", "achat_stream"])
def test_the_inference_client_reads_scripted_calls(style_url: tuple[str, str], streamed: bool) -> None:
    style, url = style_url
    request = client.ChatRequest(user("TWO-CALLS"), max_tokens=200, tools=TOOLS, tool_choice="auto")
    streamed_texts: list[str] = []

    async def call() -> client.InferenceResult:
        endpoint = client.Endpoint(url, timeout=10)
        if streamed:
            return await client.achat_stream(endpoint, request, on_token=streamed_texts.append)
        return await client.achat(endpoint, request)

    result = asyncio.run(call())
    ids = ["0", "1"] if style == "tgi" else ["call_0", "call_1"]
    assert list(result.tool_calls) == [
        {"id": ids[0], "name": "lookup", "arguments": LOOKUP_ARGUMENTS},
        {"id": ids[1], "name": "notify", "arguments": NOTIFY_ARGUMENTS},
    ]
    assert result.text == CONTENT
    assert result.finish_reason == "tool_calls"
    assert result.generated_tokens == expected_completion_tokens(
        CONTENT, ("lookup", LOOKUP_ARGUMENTS), ("notify", NOTIFY_ARGUMENTS)
    )
    if streamed:
        assert "".join(streamed_texts) == CONTENT, "only content reaches on_token, not argument fragments"


def _echo(style: str, call: dict[str, Any]) -> dict[str, Any]:
    """A call as an agent sends it back: OpenAI clients send arguments as a string, TGI's as an object."""
    arguments = json.dumps(call["arguments"]) if style == "openai" else call["arguments"]
    return {"id": call["id"], "type": "function", "function": {"name": call["name"], "arguments": arguments}}


@pytest.mark.parametrize("streamed", [False, True], ids=["achat", "achat_stream"])
def test_an_agent_loop_scripted_by_rule_order(style_url: tuple[str, str], streamed: bool) -> None:
    """Turn by turn, the conversation grows with the calls and their results, and the rules follow it."""
    style, url = style_url
    results = {"lookup": "RESULT-A: claim C-7, policy P-1", "policy": "RESULT-B: P-1 covers water damage"}
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You triage claims with tools."},
        *user("Triage claim C-7"),
    ]
    called: list[str] = []

    async def turn() -> client.InferenceResult:
        endpoint = client.Endpoint(url, timeout=10)
        request = client.ChatRequest(list(messages), max_tokens=200, tools=TOOLS, tool_choice="auto")
        if streamed:
            return await client.achat_stream(endpoint, request, on_token=lambda text: None)
        return await client.achat(endpoint, request)

    for _ in range(5):
        result = asyncio.run(turn())
        if not result.tool_calls:
            break
        messages.append(
            {
                "role": "assistant",
                "content": result.text or None,
                "tool_calls": [_echo(style, c) for c in result.tool_calls],
            }
        )
        for call in result.tool_calls:
            called.append(call["name"])
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": results[call["name"]]})
    assert called == ["lookup", "policy"]
    assert result.text == "C-7 is covered."
    assert result.finish_reason == "stop"


def test_called_names_and_arguments_are_matched_however_they_were_written(tmp_path: Path) -> None:
    rules = [
        {"match": {"contains": 'lookup {"claim_id": "C-7"}'}, "response": "matched the earlier call"},
        {"match": {"contains": "ANY"}, "response": "no match"},
    ]
    compact = {"id": "x", "type": "function", "function": {"name": "lookup", "arguments": '{"claim_id":"C-7"}'}}
    as_object = {"id": "x", "type": "function", "function": {"name": "lookup", "arguments": {"claim_id": "C-7"}}}
    with scripted_server(rules) as url:
        for call in (compact, as_object):
            messages = [*user("ANY"), {"role": "assistant", "tool_calls": [call]}, *user("and now?")]
            response = chat(url, messages)
            assert response.status_code == 200, response.text
            assert response.json()["choices"][0]["message"]["content"] == "matched the earlier call"


# --------------------------------------------------------------------------------------------------
# --no-tools: vLLM without tool calling


@pytest.mark.parametrize("stream", [False, True])
def test_no_tools_refuses_requests_with_tools(no_tools_url: str, stream: bool) -> None:
    response = chat(no_tools_url, user("PLAIN-TEXT"), tools=TOOLS, stream=stream)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("BadRequestError", None, 400)
    assert error["message"].startswith("Tool calling is not enabled on this server")
    # Without tools (the agent's JSON fallback) the same server answers.
    fallback = chat(
        no_tools_url,
        user("PLAIN-JSON"),
        response_format={"type": "json", "value": {"type": "object", "properties": {"claim_id": {"type": "string"}}}},
    )
    assert fallback.status_code == 200
    assert json.loads(fallback.json()["choices"][0]["message"]["content"]) == {"claim_id": "C-9"}


def test_no_tools_reaches_the_client_as_a_validation_error(no_tools_url: str) -> None:
    request = client.ChatRequest(user("PLAIN-TEXT"), max_tokens=20, tools=TOOLS, tool_choice="auto")
    with pytest.raises(InferenceValidationError) as caught:
        asyncio.run(client.achat(client.Endpoint(no_tools_url, timeout=10), request))
    assert caught.value.status_code == 400
    assert "Tool calling is not enabled" in str(caught.value)


# --------------------------------------------------------------------------------------------------
# Bad scripts and flags


def _script_file(tmp_path: Path, response: Any, **rule: Any) -> Path:
    path = tmp_path / "script.json"
    path.write_text(json.dumps({"rules": [{"name": "agent turn", "response": response, **rule}]}), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("response", "rule", "reason"),
    [
        ({"tool_calls": []}, {}, "'response.tool_calls' must be a non-empty list of calls"),
        ({"tool_calls": {"name": "x"}}, {}, "'response.tool_calls' must be a non-empty list of calls"),
        ({"tool_calls": ["lookup"]}, {}, 'tool call 1 must be an object {"name": ..., "arguments": {...}}'),
        ({"tool_calls": [{"arguments": {}}]}, {}, "tool call 1 needs a 'name'"),
        ({"tool_calls": [{"name": "x"}, {"name": "y", "arguments": "{}"}]}, {}, "tool call 2 (y): 'arguments' must be"),
        ({"tool_calls": [{"name": "x", "args": {}}]}, {}, "tool call 1 has 'name' and 'arguments', not 'args'"),
        ({"tool_calls": [{"name": "x"}], "content": 7}, {}, "'response.content' must be a string"),
        ({"tool_calls": [{"name": "x"}], "json": {}}, {}, "and an optional 'content', not 'json'"),
        ({"tool_calls": [{"name": "x"}]}, {"route": ["generate"]}, "tool calls are answered on the chat route only"),
        ({"tool_calls": [{"name": "x"}]}, {"default_confidence": 0.9}, "'default_confidence' cannot be scripted"),
        ({"tool_calls": [{"name": "x"}]}, {"confidence": {"a": 0.9}}, "'confidence' cannot be scripted"),
    ],
)
def test_bad_tool_call_rules_are_refused_at_load(
    tmp_path: Path, response: Any, rule: dict[str, Any], reason: str
) -> None:
    path = _script_file(tmp_path, response, **rule)
    with pytest.raises(ScriptError) as caught:
        Script.load(path)
    message = str(caught.value)
    assert message.startswith(f'{path}: rule 1 "agent turn"'), "the error names the file and the rule"
    assert reason in message


def test_a_good_tool_call_rule_loads(tmp_path: Path) -> None:
    path = _script_file(tmp_path, {"tool_calls": [{"name": "x", "arguments": {"a": [1]}}], "content": "hm"})
    (rule,) = Script.load(path).rules
    assert rule.tool_calls == (ToolCall("x", {"a": [1]}),)
    assert rule.response == "hm"


def test_the_server_will_not_start_with_a_bad_tool_call_rule(tmp_path: Path) -> None:
    path = _script_file(tmp_path, {"tool_calls": [{"arguments": {}}]})
    finished = subprocess.run(
        [sys.executable, "-m", "devserver", "--port", "0", "--script", str(path)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.returncode == 2
    assert f"error: {path}: rule 1 \"agent turn\": tool call 1 needs a 'name'" in finished.stderr


def test_tool_flags_and_their_environment_variables() -> None:
    assert config_from_args([], environ={}).tool_call_style == "tgi"
    assert config_from_args([], environ={}).no_tools is False
    config = config_from_args(["--tool-call-style", "openai", "--no-tools"], environ={})
    assert (config.tool_call_style, config.no_tools) == ("openai", True)
    environ = {"AIOS_DEVSERVER_TOOL_CALL_STYLE": "openai", "AIOS_DEVSERVER_NO_TOOLS": "1"}
    config = config_from_args(["--no-tools", "false"], environ=environ)
    assert (config.tool_call_style, config.no_tools) == ("openai", False), "a flag wins over the environment"
    with pytest.raises(SystemExit, match="--tool-call-style must be one of tgi, openai"):
        config_from_args(["--tool-call-style", "vllm"], environ={})
    with pytest.raises(ValueError, match="--tool-call-style"):
        DevServerConfig(tool_call_style="mistral").validate()


def test_a_server_process_with_its_own_script_and_style(tmp_path: Path) -> None:
    """`inference_server_argv(script=..., extra_args=...)` starts a server process with a test's own rules."""
    from tests.support.processes import free_port, http_ok, inference_server_argv, running

    path = write_script(tmp_path / "agent.json", RULES)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = inference_server_argv(
        port, ttft_ms=1, tpot_ms=0, script=path, extra_args=["--tool-call-style", "openai", "--log-level", "warning"]
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with running("devserver-tools", argv, ready=lambda log: http_ok(f"{url}/health"), env=env) as log_path:
        message = chat(url, user("NO-ARGS"), tools=TOOLS).json()["choices"][0]["message"]
        assert "tool calls openai style" in log_path.read_text(), "the start-up line says how tools are answered"
    assert message["tool_calls"][0]["id"] == "call_0"
    assert message["tool_calls"][0]["function"]["arguments"] == "{}"
