"""apps.inference.client: non-streamed calls, log-probabilities, grammars, stop sequences, tools and the
exact record/replay form of a result, against the real development server over loopback.

Every feature is checked on each call shape that supports it: TGI native and OpenAI chat, streamed and
not. The shapes share one signature here (`call(shape, base_url, **options)`), so a
feature that works on one shape and not another shows up as one failing parameter.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import pytest

from apps.inference.client import InferenceResult, TokenLogprob
from apps.inference.errors import InferenceValidationError
from devserver import tokenizer
from tests.inference.shapes import SHAPES, Shape
from tests.inference.shapes import call as call_shape

PROMPT = "Say hello"
REPLY = "Hello from the script."
PIECES = tokenizer.split(REPLY)
# The development server's end-of-sequence token and its fixed log-probability (engine.build_plan).
END_TEXT, END_LOGPROB = tokenizer.EOS_TEXT, -0.0123
# The alternatives the development server ranks after the chosen token (engine._ALTERNATIVES).
ALTERNATIVES = (" the", " a", " and", " of", " to", " in")


def call(shape: Shape, base_url: str, text: str = PROMPT, *, received: list[str] | None = None, **options: Any) -> Any:
    return call_shape(shape, base_url, text, received=received, **options)


CHAT_SHAPES = [shape for shape in SHAPES if shape.values[0][0] == "chat"]  # type: ignore[index]


# --------------------------------------------------------------------------------------------------
# Every shape, plain


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_returns_the_same_result(base_url: str, shape: Shape) -> None:
    protocol, streamed = shape
    received: list[str] = []
    named = {"model_id": "aios/test-model"} if protocol == "generate" else {}
    # TGI reports a seed only when it samples; chat results carry the requested one.
    result = call(shape, base_url, received=received, seed=7, temperature=0.5, **named)
    assert result.text == REPLY
    assert result.finish_reason == "stop"
    assert result.generated_tokens == len(PIECES) + 1, "the end token counts as generated"
    assert result.attempts == 1
    assert result.tokens == () and result.tool_calls == (), "nothing asked for, nothing recorded"
    assert result.latency_ms > 0
    if streamed:
        assert received == PIECES
        assert result.ttft_ms is not None and 0 < result.ttft_ms <= result.latency_ms
    else:
        assert received == [] and result.ttft_ms is None, "a reply that arrives whole has no first token"
    if protocol == "generate":
        assert result.model_id == "aios/test-model"
        # Streams report the prompt's length; non-streamed TGI details do not.
        assert result.prompt_tokens == (tokenizer.count(PROMPT) if streamed else None)
    else:
        assert result.model_id is None, "TGI echoes huggingface_hub's placeholder model name"
        assert result.prompt_tokens is not None and result.prompt_tokens > tokenizer.count(PROMPT)
    assert result.seed == 7
    assert InferenceResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


@pytest.mark.parametrize("shape", CHAT_SHAPES)
def test_chat_keeps_the_served_model_name(base_url: str, shape: Shape) -> None:
    result = call(shape, base_url, model="served/name", max_tokens=2)
    assert (result.model_id, result.finish_reason, result.generated_tokens) == ("served/name", "length", 2)


# --------------------------------------------------------------------------------------------------
# Log-probabilities


def expected_tokens(*, top: int, special_flag: bool) -> tuple[TokenLogprob, ...]:
    """What the development server reports for REPLY: fixed per (piece, position), as tokenizer says."""
    tokens = []
    for position, piece in enumerate([*PIECES, END_TEXT]):
        logprob = END_LOGPROB if piece == END_TEXT else tokenizer.token_logprob(piece, position)
        alternatives = [(piece, logprob)]
        for offset, text in enumerate(t for t in ALTERNATIVES if t != piece):
            if len(alternatives) >= top:
                break
            alternatives.append((text, round(logprob - 0.5 * (offset + 1), 4)))
        tokens.append(
            TokenLogprob(
                text=piece,
                logprob=logprob,
                top=tuple(alternatives[:top]),
                special=special_flag and piece == END_TEXT,
            )
        )
    return tuple(tokens)


@pytest.mark.parametrize("shape", SHAPES)
def test_logprobs(base_url: str, shape: Shape) -> None:
    protocol = shape[0]
    # Only TGI's native protocol says which token is special; chat reports TGI's end token unmarked.
    special_flag = protocol == "generate"
    plain = call(shape, base_url, logprobs=True)
    assert plain.tokens == expected_tokens(top=0, special_flag=special_flag)
    assert plain.text == "".join(t.text for t in plain.tokens if t.text != END_TEXT)
    ranked = call(shape, base_url, logprobs=True, top_logprobs=3)
    assert ranked.tokens == expected_tokens(top=3, special_flag=special_flag)
    assert all(t.logprob is not None and t.logprob < 0 for t in ranked.tokens)
    implied = call(shape, base_url, top_logprobs=2)
    assert implied.tokens == expected_tokens(top=2, special_flag=special_flag), "top_logprobs implies logprobs"


@pytest.mark.parametrize("shape", SHAPES)
def test_too_many_alternatives_is_a_validation_error(base_url: str, shape: Shape) -> None:
    with pytest.raises(InferenceValidationError, match=r"`top_n_tokens` must be >= 0 and <= 5\. Given: 6"):
        call(shape, base_url, logprobs=True, top_logprobs=6)


# --------------------------------------------------------------------------------------------------
# Grammars and stop sequences


@pytest.mark.parametrize("shape", SHAPES)
def test_regex_grammar(base_url: str, shape: Shape) -> None:
    pattern = r"POL-[0-9]{5} (approved|declined)"
    grammar = {"type": "regex", "value": pattern}
    key = "grammar" if shape[0] == "generate" else "response_format"
    result = call(shape, base_url, "Decide on the claim.", **{key: grammar})
    assert re.fullmatch(pattern, result.text), result.text


@pytest.mark.parametrize("shape", SHAPES)
def test_json_grammar(base_url: str, shape: Shape) -> None:
    schema = {
        "type": "object",
        "properties": {"claim_id": {"type": "string"}, "amount": {"type": "number"}},
        "required": ["claim_id", "amount"],
    }
    key = "grammar" if shape[0] == "generate" else "response_format"
    result = call(shape, base_url, "Extract the claim.", max_tokens=200, **{key: {"type": "json", "value": schema}})
    jsonschema.validate(json.loads(result.text), schema)


@pytest.mark.parametrize("shape", SHAPES)
def test_stop_sequences(base_url: str, shape: Shape) -> None:
    received: list[str] = []
    result = call(shape, base_url, "STOP-TEST", received=received, stop=["."])
    assert (result.text, result.finish_reason) == ("alpha beta.", "stop_sequence")
    if shape[1]:
        assert "".join(received) == "alpha beta."
    newline = call(shape, base_url, "STOP-TEST", stop=["\n", "zeta"])
    assert (newline.text, newline.finish_reason) == ("alpha beta. gamma delta\n", "stop_sequence")


# --------------------------------------------------------------------------------------------------
# Tools (chat)

LOOKUP = {
    "type": "function",
    "function": {
        "name": "lookup_claim",
        "description": "Fetch a claim by its policy number.",
        "parameters": {
            "type": "object",
            "properties": {"policy": {"type": "string"}, "include_history": {"type": "boolean"}},
            "required": ["policy", "include_history"],
        },
    },
}
ESCALATE = {
    "type": "function",
    "function": {
        "name": "escalate",
        "parameters": {"type": "object", "properties": {"reason": {"type": "string"}}, "required": ["reason"]},
    },
}


@pytest.mark.parametrize("shape", CHAT_SHAPES)
@pytest.mark.parametrize(
    ("tool_choice", "expected_name"),
    [
        ("required", "lookup_claim"),
        ("auto", "lookup_claim"),
        ({"type": "function", "function": {"name": "escalate"}}, "escalate"),
    ],
)
def test_tool_calls(base_url: str, shape: Shape, tool_choice: Any, expected_name: str) -> None:
    received: list[str] = []
    # A prompt no scripted rule answers: with "auto", a scripted plain reply would be the model choosing no tool.
    result = call(
        shape, base_url, "Look up the claim.", received=received, tools=[LOOKUP, ESCALATE], tool_choice=tool_choice
    )
    assert received == [], "tool-call arguments are not content for the reader"
    assert result.text == ""
    assert len(result.tool_calls) == 1
    tool_call = result.tool_calls[0]
    assert set(tool_call) == {"id", "name", "arguments"}
    assert tool_call["name"] == expected_name
    assert isinstance(tool_call["id"], str)
    schema = (LOOKUP if expected_name == "lookup_claim" else ESCALATE)["function"]["parameters"]
    jsonschema.validate(tool_call["arguments"], schema)
    assert InferenceResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


@pytest.mark.parametrize("shape", CHAT_SHAPES)
def test_tool_choice_none_answers_in_text(base_url: str, shape: Shape) -> None:
    result = call(shape, base_url, tools=[LOOKUP], tool_choice="none")
    assert (result.text, result.tool_calls) == (REPLY, ())


@pytest.mark.parametrize("shape", CHAT_SHAPES)
def test_tools_and_a_response_format_are_refused(base_url: str, shape: Shape) -> None:
    with pytest.raises(InferenceValidationError, match="Grammar and tools are mutually exclusive") as error:
        call(shape, base_url, tools=[LOOKUP], response_format={"type": "json", "value": {"properties": {}}})
    assert error.value.status_code == 422
    assert error.value.retryable is False


@pytest.mark.parametrize("shape", CHAT_SHAPES)
def test_unknown_tool_choice_is_refused(base_url: str, shape: Shape) -> None:
    with pytest.raises(InferenceValidationError, match="Tool choice 'nope' not found"):
        call(shape, base_url, tools=[LOOKUP], tool_choice={"type": "function", "function": {"name": "nope"}})


# --------------------------------------------------------------------------------------------------
# Record and replay


def test_results_round_trip_exactly(base_url: str) -> None:
    streamed = call(("generate", True), base_url, max_tokens=50, top_logprobs=2, seed=3)
    tooled = call(("chat", False), base_url, "x", max_tokens=50, tools=[LOOKUP], logprobs=True)
    raw_arguments = InferenceResult(
        text="",
        generated_tokens=1,
        prompt_tokens=None,
        finish_reason="tool_calls",
        model_id="m",
        ttft_ms=None,
        latency_ms=1.5,
        seed=None,
        tokens=(TokenLogprob(text="<s>", logprob=None, top=(), special=True),),
        tool_calls=({"id": None, "name": "f", "arguments": "not json {"},),
        attempts=3,
    )
    for result in (streamed, tooled, raw_arguments):
        record = json.dumps(result.to_dict(), sort_keys=True)
        replayed = InferenceResult.from_dict(json.loads(record))
        assert replayed == result
        assert json.dumps(replayed.to_dict(), sort_keys=True) == record, "byte for byte"
        assert replayed.to_dict() == json.loads(record), "to_dict is already JSON-native"
    assert all(isinstance(t.top, tuple) and all(isinstance(p, tuple) for p in t.top) for t in streamed.tokens)


def test_records_from_before_the_new_fields_still_load() -> None:
    old = {
        "text": "Hi",
        "generated_tokens": 2,
        "prompt_tokens": 4,
        "finish_reason": "stop",
        "model_id": None,
        "ttft_ms": 3.25,
        "latency_ms": 9.5,
        "seed": None,
    }
    result = InferenceResult.from_dict(old)
    assert (result.tokens, result.tool_calls, result.attempts) == ((), (), 1)
    assert {k: v for k, v in result.to_dict().items() if k in old} == old
    with pytest.raises(ValueError, match="Not fields of an InferenceResult: surprise"):
        InferenceResult.from_dict({**old, "surprise": 1})


def test_a_result_does_not_share_its_tool_arguments() -> None:
    arguments = {"policy": "POL-1"}
    result = InferenceResult.from_dict(
        {
            "text": "",
            "generated_tokens": 1,
            "prompt_tokens": 1,
            "finish_reason": "stop",
            "model_id": None,
            "ttft_ms": None,
            "latency_ms": 1.0,
            "seed": None,
            "tool_calls": [{"id": "0", "name": "lookup_claim", "arguments": arguments}],
        }
    )
    arguments["policy"] = "changed"
    record = result.to_dict()
    record["tool_calls"][0]["arguments"]["policy"] = "changed again"
    assert result.tool_calls[0]["arguments"] == {"policy": "POL-1"}
