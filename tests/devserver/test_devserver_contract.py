"""The development server against the vendored TGI and TEI OpenAPI contracts.

Every route's success bodies, every SSE event and every error body is validated against the schema the
spec documents for it. Where the real servers knowingly differ from their own spec, the dev server
follows the servers; those places are listed once, in DEVIATIONS, and each has a test that proves both
halves: the spec says one thing, the wire says the other.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest

from devserver.scripts import Script

# Documented differences between the upstream specs and the upstream servers (see
# shared/reference/tgi-protocol.md section 8 and shared/contracts/README.md). The dev server follows the
# servers. Keys are referenced by the tests below; a deviation without a test is a bug in this file.
DEVIATIONS: dict[str, str] = {
    "object_field": (
        "TGI serialises an `object` tag first (chat.completion, chat.completion.chunk, text_completion) "
        "that the spec's ChatCompletion, ChatCompletionChunk, Chunk and CompletionFinal schemas omit."
    ),
    "models_list_wrapper": (
        "GET /v1/models returns {object: list, data: [ModelInfo]}; the spec documents a bare ModelInfo."
    ),
    "details_default_false": (
        "GenerateParameters.details is documented with default true; the router defaults it to false, so "
        "`details` is absent from responses unless requested."
    ),
    "max_new_tokens_default": (
        "max_new_tokens is documented with default 1024; the router fills the context instead "
        "(max_total_tokens - input tokens)."
    ),
    "stream_errors_in_band": (
        "/generate_stream documents 422/424/429 responses; the router always answers 200 once the body "
        "parsed and sends the ErrorResponse as an SSE event."
    ),
    "chat_stream_error_shape": (
        "Chat stream errors are sent as {error: {message, http_status_code: 422}} followed by [DONE]; the "
        "spec has no schema for them."
    ),
    "finish_reason_lowercase": "FinishReason's example is 'Length'; the values on the wire are lowercase.",
    "json_object_alias": (
        "GrammarType accepts a `json_object` alias of `json` (OpenAI clients send it); not in the spec."
    ),
    "tei_batch_size_422": "TEI documents 413 for an oversized batch; the server answers 422 (error_type Validation).",
    "tei_error_type_capitalised": (
        "TEI's error examples show lowercase error_type ('validation'); the server sends the capitalised "
        "ErrorType enum values ('Validation', 'Overloaded', 'Backend')."
    ),
    "tei_openai_error_type_key": (
        "TEI's OpenAICompatErrorResponse documents `error_type`; the server serialises that field as `type`."
    ),
}

JSON = "application/json"
SSE = "text/event-stream"
Parse = Callable[[bytes], list[Any]]


def post(base_url: str, path: str, body: Any, **headers: str) -> httpx2.Response:
    return httpx2.post(base_url + path, json=body, headers=headers, timeout=10)


def stream_body(base_url: str, path: str, body: Any, **headers: str) -> tuple[httpx2.Response, bytes]:
    with httpx2.stream("POST", base_url + path, json=body, headers=headers, timeout=10) as response:
        return response, response.read()


def test_every_deviation_is_tested() -> None:
    source = Path(__file__).read_text(encoding="utf-8")
    for key in DEVIATIONS:
        assert source.count(f'DEVIATIONS["{key}"]') >= 1, f"deviation {key} has no test"


# --------------------------------------------------------------------------------------------------
# TGI native routes


def test_info_matches_contract(base_url: str, tgi_contract: Any) -> None:
    response = httpx2.get(base_url + "/info")
    assert response.status_code == 200
    tgi_contract.check_response("/info", "get", 200, JSON, response.json())
    assert response.json()["model_id"] == "aios/test-model"  # from AIOS_DEVSERVER_MODEL_ID


@pytest.mark.parametrize(
    "parameters",
    [
        {"details": True, "max_new_tokens": 12},
        {
            "details": True,
            "decoder_input_details": True,
            "top_n_tokens": 3,
            "max_new_tokens": 8,
            "seed": 7,
            "do_sample": True,
        },
        {"details": True, "best_of": 2, "do_sample": True, "max_new_tokens": 5},
        {"max_new_tokens": 4},
    ],
)
def test_generate_matches_contract(base_url: str, tgi_contract: Any, parameters: dict[str, Any]) -> None:
    response = post(base_url, "/generate", {"inputs": "Tell me about claims", "parameters": parameters})
    assert response.status_code == 200, response.text
    tgi_contract.check_response("/generate", "post", 200, JSON, response.json())


def test_compat_route_matches_contract(base_url: str, tgi_contract: Any, parse_sse: Parse) -> None:
    response = post(base_url, "/", {"inputs": "Hello", "parameters": {"details": True, "max_new_tokens": 5}})
    assert response.status_code == 200
    tgi_contract.check_response("/", "post", 200, JSON, response.json())

    _, raw = stream_body(
        base_url, "/", {"inputs": "Hello", "stream": True, "parameters": {"details": True, "max_new_tokens": 5}}
    )
    events = parse_sse(raw)
    assert len(events) == 5
    for event in events:
        tgi_contract.check_response("/", "post", 200, SSE, event)


@pytest.mark.parametrize(
    "parameters",
    [
        {"details": True, "max_new_tokens": 6},
        {"max_new_tokens": 6},
        {"details": True, "top_n_tokens": 2, "max_new_tokens": 3},
    ],
)
def test_generate_stream_events_match_contract(
    base_url: str, tgi_contract: Any, parse_sse: Parse, parameters: dict[str, Any]
) -> None:
    response, raw = stream_body(base_url, "/generate_stream", {"inputs": "Say hello", "parameters": parameters})
    assert response.status_code == 200
    events = parse_sse(raw)
    assert events
    for event in events:
        tgi_contract.check_response("/generate_stream", "post", 200, SSE, event)


@pytest.mark.parametrize(
    ("parameters", "status", "error_type"),
    [
        ({"max_new_tokens": 0}, 422, "validation"),
        ({"temperature": 0}, 422, "validation"),
    ],
)
def test_generate_errors_match_contract(
    base_url: str, tgi_contract: Any, parameters: dict[str, Any], status: int, error_type: str
) -> None:
    response = post(base_url, "/generate", {"inputs": "x", "parameters": parameters})
    assert response.status_code == status
    assert response.json()["error_type"] == error_type
    tgi_contract.check_response("/generate", "post", status, JSON, response.json())


@pytest.mark.parametrize(("fault", "status"), [("overloaded", 429), ("generation", 424)])
def test_fault_errors_match_contract(base_url: str, tgi_contract: Any, fault: str, status: int) -> None:
    for path in ("/generate", "/"):
        response = post(base_url, path, {"inputs": "x", "parameters": {"max_new_tokens": 3}}, **{"x-aios-fault": fault})
        assert response.status_code == status
        tgi_contract.check_response(path, "post", status, JSON, response.json())
        assert response.json()["error_type"] == fault


def test_tokenize_matches_contract(base_url: str, tgi_contract: Any) -> None:
    response = post(base_url, "/tokenize", {"inputs": "Hello, world"})
    assert response.status_code == 200
    tgi_contract.check_response("/tokenize", "post", 200, JSON, response.json())


def test_health_and_metrics_match_contract(base_url: str, tgi_contract: Any) -> None:
    for path in ("/health", "/", "/ping"):
        response = httpx2.get(base_url + path)
        assert response.status_code == 200
        assert response.content == b""
    metrics = httpx2.get(base_url + "/metrics")
    assert metrics.status_code == 200
    tgi_contract.check_response("/metrics", "get", 200, "text/plain", metrics.text)


# --------------------------------------------------------------------------------------------------
# OpenAI-compatible routes

CLAIM_SCHEMA = {
    "type": "object",
    "properties": {
        "claimant": {"type": "string"},
        "amount": {"type": "number", "minimum": 1},
        "incident_type": {"type": "string", "enum": ["auto", "property", "injury", "theft", "other"]},
    },
    "required": ["claimant", "amount", "incident_type"],
}


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"logprobs": True, "top_logprobs": 2},
        {"response_format": {"type": "json_object", "value": CLAIM_SCHEMA}},
        {
            "tools": [{"type": "function", "function": {"name": "file_claim", "parameters": CLAIM_SCHEMA}}],
            "tool_choice": "required",
        },
    ],
)
def test_chat_completion_matches_contract(base_url: str, tgi_contract: Any, extra: dict[str, Any]) -> None:
    body = {"model": "tgi", "messages": [{"role": "user", "content": "Hi there"}], "max_tokens": 40, **extra}
    response = post(base_url, "/v1/chat/completions", body)
    assert response.status_code == 200, response.text
    tgi_contract.check_response("/v1/chat/completions", "post", 200, JSON, response.json())


@pytest.mark.parametrize(
    "extra",
    [
        {"stream_options": {"include_usage": True}},
        {"logprobs": True},
        {"tools": [{"type": "function", "function": {"name": "file_claim", "parameters": CLAIM_SCHEMA}}]},
    ],
)
def test_chat_stream_chunks_match_contract(
    base_url: str, tgi_contract: Any, parse_sse: Parse, extra: dict[str, Any]
) -> None:
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 30, "stream": True, **extra}
    response, raw = stream_body(base_url, "/v1/chat/completions", body)
    assert response.status_code == 200
    events = parse_sse(raw)
    assert events[-1] == "[DONE]"
    for event in events[:-1]:
        tgi_contract.check_response("/v1/chat/completions", "post", 200, SSE, event)


def test_completions_match_contract(base_url: str, tgi_contract: Any, parse_sse: Parse) -> None:
    response = post(base_url, "/v1/completions", {"prompt": ["One", "Two"], "max_tokens": 6})
    assert response.status_code == 200
    tgi_contract.check_response("/v1/completions", "post", 200, JSON, response.json())

    _, raw = stream_body(base_url, "/v1/completions", {"prompt": "One", "max_tokens": 6, "stream": True})
    events = parse_sse(raw)
    assert events[-1] == "[DONE]"
    for event in events[:-2]:
        tgi_contract.check_response("/v1/completions", "post", 200, SSE, event)
    # The last event per prompt carries usage: TGI's CompletionFinal inside the stream.
    tgi_contract.check("CompletionFinal", events[-2])


def test_completions_errors_match_contract(base_url: str, tgi_contract: Any) -> None:
    too_many = post(base_url, "/v1/completions", {"prompt": ["a", "b", "c", "d", "e"]})
    assert too_many.status_code == 422
    tgi_contract.check_response("/v1/completions", "post", 422, JSON, too_many.json())
    assert too_many.json()["error_type"] == "batch size exceeded"
    suffix = post(base_url, "/v1/completions", {"prompt": "a", "suffix": "b"})
    assert suffix.status_code == 422
    tgi_contract.check_response("/v1/completions", "post", 422, JSON, suffix.json())


# --------------------------------------------------------------------------------------------------
# Deviations, each proven against the spec


def test_deviation_object_field(base_url: str, tgi_contract: Any, parse_sse: Parse) -> None:
    reason = DEVIATIONS["object_field"]
    schemas = tgi_contract.spec["components"]["schemas"]
    for name in ("ChatCompletion", "ChatCompletionChunk", "Chunk", "CompletionFinal"):
        assert "object" not in schemas[name]["properties"], reason
    chat = post(
        base_url, "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 3}
    ).json()
    assert next(iter(chat)) == "object" and chat["object"] == "chat.completion", reason
    _, raw = stream_body(
        base_url,
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x"}], "max_tokens": 3, "stream": True},
    )
    assert all(next(iter(e)) == "object" and e["object"] == "chat.completion.chunk" for e in parse_sse(raw)[:-1]), (
        reason
    )
    completion = post(base_url, "/v1/completions", {"prompt": "x", "max_tokens": 3}).json()
    assert completion["object"] == "text_completion", reason


def test_deviation_models_list_wrapper(base_url: str, tgi_contract: Any) -> None:
    reason = DEVIATIONS["models_list_wrapper"]
    body = httpx2.get(base_url + "/v1/models").json()
    assert tgi_contract.errors(tgi_contract.response_schema("/v1/models", "get", 200, JSON), body), reason
    assert body["object"] == "list"
    assert body["data"][0]["id"] == "aios/test-model"
    tgi_contract.check("ModelInfo", body["data"][0])


def test_deviation_details_default_false(base_url: str, tgi_contract: Any) -> None:
    reason = DEVIATIONS["details_default_false"]
    assert (
        tgi_contract.spec["components"]["schemas"]["GenerateParameters"]["properties"]["details"]["default"] == "true"
    )
    body = post(base_url, "/generate", {"inputs": "x", "parameters": {"max_new_tokens": 3}}).json()
    assert "details" not in body, reason
    tgi_contract.check("GenerateResponse", body)


def test_deviation_max_new_tokens_default(make_server: Any) -> None:
    reason = DEVIATIONS["max_new_tokens_default"]
    # A context of 40 tokens: with no max_new_tokens the reply may use all that the prompt leaves free.
    endless = Script.from_data([{"match": {}, "response": "word " * 100}])
    with make_server(max_input_tokens=30, max_total_tokens=40, tpot_ms=0, script=endless) as url:
        body = post(url, "/generate", {"inputs": "one two three four five", "parameters": {"details": True}}).json()
        assert body["details"]["generated_tokens"] == 40 - 5, reason
        assert body["details"]["finish_reason"] == "length"
        too_long = post(url, "/generate", {"inputs": "x", "parameters": {"max_new_tokens": 1024}})
        assert too_long.status_code == 422
        assert "must be <= 40" in too_long.json()["error"]


def test_deviation_stream_errors_in_band(base_url: str, tgi_contract: Any, parse_sse: Parse) -> None:
    reason = DEVIATIONS["stream_errors_in_band"]
    cases = [
        ({"max_new_tokens": 0}, {}, 422, "validation"),
        ({"max_new_tokens": 5}, {"x-aios-fault": "overloaded"}, 429, "overloaded"),
        ({"max_new_tokens": 5}, {"x-aios-fault": "generation"}, 424, "generation"),
    ]
    for parameters, headers, documented_status, error_type in cases:
        assert str(documented_status) in tgi_contract.spec["paths"]["/generate_stream"]["post"]["responses"]
        response, raw = stream_body(base_url, "/generate_stream", {"inputs": "x", "parameters": parameters}, **headers)
        assert response.status_code == 200, reason
        events = parse_sse(raw)
        assert len(events) == 1 and events[0]["error_type"] == error_type
        tgi_contract.check_response("/generate_stream", "post", documented_status, SSE, events[0])


def test_deviation_chat_stream_error_shape(base_url: str, tgi_contract: Any, parse_sse: Parse) -> None:
    reason = DEVIATIONS["chat_stream_error_shape"]
    response, raw = stream_body(
        base_url,
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x"}], "max_tokens": 5, "stream": True},
        **{"x-aios-fault": "overloaded"},
    )
    assert response.status_code == 200, reason
    events = parse_sse(raw)
    assert events == [{"error": {"message": "Model is overloaded", "http_status_code": 422}}, "[DONE]"], reason
    assert tgi_contract.errors(tgi_contract.component("ChatCompletionChunk"), events[0]), reason
    assert tgi_contract.errors(tgi_contract.component("ErrorResponse"), events[0]), reason


def test_deviation_finish_reason_lowercase(base_url: str, tgi_contract: Any) -> None:
    reason = DEVIATIONS["finish_reason_lowercase"]
    finish_reason = tgi_contract.spec["components"]["schemas"]["FinishReason"]
    assert finish_reason["example"] == "Length" and "Length" not in finish_reason["enum"]
    body = post(base_url, "/generate", {"inputs": "x", "parameters": {"max_new_tokens": 1, "details": True}}).json()
    assert body["details"]["finish_reason"] == "length", reason


def test_deviation_json_object_alias(base_url: str, tgi_contract: Any) -> None:
    reason = DEVIATIONS["json_object_alias"]
    grammar = {"type": "json_object", "value": CLAIM_SCHEMA}
    assert tgi_contract.errors(tgi_contract.component("GrammarType"), grammar), reason
    response = post(base_url, "/generate", {"inputs": "x", "parameters": {"grammar": grammar, "max_new_tokens": 100}})
    assert response.status_code == 200, reason


# --------------------------------------------------------------------------------------------------
# TEI


@pytest.fixture(scope="module")
def embeddings_loaded(base_url: str) -> None:
    """The server loads its embedding model on the first request; wait for that once, generously."""
    assert httpx2.post(base_url + "/embed", json={"inputs": "warm up"}, timeout=120).status_code == 200


@pytest.mark.usefixtures("embeddings_loaded")
def test_embed_matches_contract(base_url: str, tei_contract: Any) -> None:
    for inputs in ("a single text", ["first text", "second text"]):
        response = post(base_url, "/embed", {"inputs": inputs})
        assert response.status_code == 200
        tei_contract.check_response("/embed", "post", 200, JSON, response.json())
        assert all(len(row) == 384 for row in response.json())


@pytest.mark.usefixtures("embeddings_loaded")
def test_openai_embeddings_match_contract(base_url: str, tei_contract: Any) -> None:
    response = post(base_url, "/v1/embeddings", {"input": ["a", "b"], "model": "x"})
    assert response.status_code == 200
    tei_contract.check_response("/v1/embeddings", "post", 200, JSON, response.json())


def test_deviation_tei_batch_size_422(base_url: str, tei_contract: Any) -> None:
    reason = DEVIATIONS["tei_batch_size_422"]
    assert "413" in tei_contract.spec["paths"]["/embed"]["post"]["responses"]
    response = post(base_url, "/embed", {"inputs": ["x"] * 33})
    assert response.status_code == 422, reason
    assert response.json() == {"error": "batch size 33 > maximum allowed batch size 32", "error_type": "Validation"}
    tei_contract.check_response("/embed", "post", 413, JSON, response.json())


def test_deviation_tei_error_type_capitalised(base_url: str, tei_contract: Any) -> None:
    reason = DEVIATIONS["tei_error_type_capitalised"]
    examples = tei_contract.spec["paths"]["/embed"]["post"]["responses"]
    assert examples["429"]["content"][JSON]["example"]["error_type"] == "overloaded"
    for fault, status, error_type in (("overloaded", 429, "Overloaded"), ("generation", 424, "Backend")):
        response = post(base_url, "/embed", {"inputs": "x"}, **{"x-aios-fault": fault})
        assert response.status_code == status
        assert response.json()["error_type"] == error_type, reason
        tei_contract.check_response("/embed", "post", status, JSON, response.json())
    empty = post(base_url, "/embed", {"inputs": []})
    assert empty.status_code == 422 and empty.json()["error_type"] == "Validation"
    tei_contract.check("ErrorResponse", empty.json())


def test_deviation_tei_openai_error_type_key(base_url: str, tei_contract: Any) -> None:
    reason = DEVIATIONS["tei_openai_error_type_key"]
    response = post(base_url, "/v1/embeddings", {"input": ["x"] * 40})
    assert response.status_code == 422
    body = response.json()
    assert body == {"message": "batch size 40 > maximum allowed batch size 32", "code": 422, "type": "Validation"}, (
        reason
    )
    assert tei_contract.errors(tei_contract.component("OpenAICompatErrorResponse"), body), reason
    tei_contract.check(
        "OpenAICompatErrorResponse", {"message": body["message"], "code": body["code"], "error_type": body["type"]}
    )
