"""The development server's exact wire behaviour: bytes, headers, status codes, messages, timing.

These pin what `shared/reference/tgi-protocol.md` says a real TGI/TEI does, so code developed against the
dev server meets no surprise in production.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2
import jsonschema
import pytest

from apps.workflows.demo import CLAIM_FIELDS_SCHEMA as CLAIM_SCHEMA
from devserver import tokenizer
from devserver.embeddings import cosine
from devserver.scripts import FALLBACK_PREFIX, Script

REPO_ROOT = Path(__file__).resolve().parents[2]
Parse = Callable[[bytes], list[Any]]
Split = Callable[[bytes], list[bytes]]

TIMING_HEADERS = (
    "x-compute-time",
    "x-total-time",
    "x-validation-time",
    "x-queue-time",
    "x-inference-time",
    "x-time-per-token",
    "x-prompt-tokens",
    "x-generated-tokens",
)


def post(base_url: str, path: str, body: Any, **headers: str) -> httpx2.Response:
    return httpx2.post(base_url + path, json=body, headers=headers, timeout=10)


def stream_raw(base_url: str, path: str, body: Any, **headers: str) -> tuple[httpx2.Response, bytes]:
    """The response and its body bytes exactly as sent (chunked transfer coding removed)."""
    with httpx2.stream("POST", base_url + path, json=body, headers=headers, timeout=10) as response:
        return response, b"".join(response.iter_raw())


def raw_http(base_url: str, path: str, body: bytes, content_type: str = "application/json") -> tuple[bytes, bytes]:
    """One HTTP/1.1 exchange over a plain socket: (header block, body with transfer coding intact)."""
    parts = urlsplit(base_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        request = (
            f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode("ascii") + body
        sock.sendall(request)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    raw = b"".join(chunks)
    head, _, rest = raw.partition(b"\r\n\r\n")
    return head, rest


# --------------------------------------------------------------------------------------------------
# SSE framing and stream headers


def test_generate_stream_framing_is_byte_exact(base_url: str, split_sse: Split) -> None:
    _, raw = stream_raw(base_url, "/generate_stream", {"inputs": "Say hello", "parameters": {"details": True}})
    frames = split_sse(raw)
    assert raw.endswith(b"\n\n")
    assert b"data: " not in raw, "axum writes `data:` with no space"
    assert all(frame.startswith(b'data:{"index":') for frame in frames)
    assert b"[DONE]" not in raw, "/generate_stream has no sentinel"
    for frame in frames[:-1]:
        assert frame.endswith(b',"generated_text":null,"details":null}')
    final = json.loads(frames[-1][len(b"data:") :])
    assert final["generated_text"] == "Hello from the script."
    assert final["token"] == {"id": 2, "text": "</s>", "logprob": final["token"]["logprob"], "special": True}
    assert final["details"] == {
        "finish_reason": "eos_token",
        "generated_tokens": len(frames),
        "seed": final["details"]["seed"],
        "input_length": 2,
    }
    assert [json.loads(f[5:])["index"] for f in frames] == list(range(1, len(frames) + 1))


def test_stream_final_event_details_only_when_requested(base_url: str, parse_sse: Parse) -> None:
    _, raw = stream_raw(base_url, "/generate_stream", {"inputs": "Say hello", "parameters": {"max_new_tokens": 3}})
    events = parse_sse(raw)
    assert events[-1]["generated_text"] == "Hello from the"
    assert events[-1]["details"] is None
    assert all("top_tokens" not in e for e in events)


def test_stream_headers_are_tgis_and_carry_no_timings(base_url: str) -> None:
    head, body = raw_http(base_url, "/generate_stream", b'{"inputs":"Say hello","parameters":{"max_new_tokens":2}}')
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0] == "HTTP/1.1 200 OK"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    headers = {k.lower(): v for k, v in headers.items()}
    assert headers["content-type"] == "text/event-stream"
    assert headers["cache-control"] == "no-cache"
    assert headers["x-accel-buffering"] == "no"
    assert headers["x-compute-type"] == "gpu+optimized"
    assert headers["x-compute-characters"] == str(len("Say hello"))
    assert headers["transfer-encoding"] == "chunked"
    for name in (*TIMING_HEADERS, "content-length", "server"):
        assert name not in headers, name
    assert b"data:{" in body


def test_chat_stream_framing_is_byte_exact(base_url: str, split_sse: Split) -> None:
    body = {"messages": [{"role": "user", "content": "Say hello"}], "stream": True}
    _, raw = stream_raw(base_url, "/v1/chat/completions", body)
    frames = split_sse(raw)
    assert frames[-1] == b"data:[DONE]", "TGI's sentinel has no space"
    assert raw.endswith(b"data:[DONE]\n\n")
    assert b"data: " not in raw
    chunks = [json.loads(f[5:]) for f in frames[:-1]]
    assert all(f.startswith(b'data:{"object":"chat.completion.chunk","id":"",') for f in frames[:-1])
    for chunk in chunks:
        assert chunk["system_fingerprint"] == "3.3.6-aios-devserver"
        assert chunk["usage"] is None
        assert chunk["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == "Hello from the script."
    assert chunks[-1]["choices"][0]["delta"]["content"] == "", "the EOS token streams as empty content"
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * (len(chunks) - 1) + ["stop"]


def test_chat_stream_usage_chunk_only_when_asked(base_url: str, parse_sse: Parse) -> None:
    body = {"messages": [{"role": "user", "content": "Say hello"}], "stream": True, "max_tokens": 3}
    _, raw = stream_raw(base_url, "/v1/chat/completions", {**body, "stream_options": {"include_usage": True}})
    events = parse_sse(raw)
    assert events[-1] == "[DONE]"
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 3
    assert usage_chunk["usage"]["total_tokens"] == usage_chunk["usage"]["prompt_tokens"] + 3
    assert events[-3]["choices"][0]["finish_reason"] == "length", "length is not remapped"

    _, raw = stream_raw(base_url, "/v1/chat/completions", {**body, "stream_options": {"include_usage": False}})
    assert all(e == "[DONE]" or e["usage"] is None for e in parse_sse(raw))


@pytest.mark.parametrize(
    ("stop", "text", "finish_reason"),
    [
        (["."], "alpha beta.", "stop_sequence"),
        (["\n"], "alpha beta. gamma delta\n", "stop_sequence"),
        (["gam"], "alpha beta. gam", "stop_sequence"),
        (["zeta", "beta"], "alpha beta", "stop_sequence"),
        (["not there"], "alpha beta. gamma delta\nepsilon zeta", "eos_token"),
    ],
)
def test_stop_sequences(base_url: str, stop: list[str], text: str, finish_reason: str) -> None:
    body = post(base_url, "/generate", {"inputs": "STOP-TEST", "parameters": {"stop": stop, "details": True}}).json()
    assert body["generated_text"] == text
    assert body["details"]["finish_reason"] == finish_reason
    chat = post(
        base_url, "/v1/chat/completions", {"messages": [{"role": "user", "content": "STOP-TEST"}], "stop": stop}
    ).json()
    assert chat["choices"][0]["message"]["content"] == text
    assert chat["choices"][0]["finish_reason"] == ("stop" if finish_reason == "eos_token" else "stop_sequence")


def test_max_new_tokens_is_honoured(base_url: str) -> None:
    body = post(base_url, "/generate", {"inputs": "STOP-TEST", "parameters": {"max_new_tokens": 2, "details": True}})
    details = body.json()["details"]
    assert body.json()["generated_text"] == "alpha beta"
    assert details["finish_reason"] == "length"
    assert details["generated_tokens"] == 2
    assert [t["special"] for t in details["tokens"]] == [False, False]


def test_details_tokens_seed_prefill_and_top_tokens(base_url: str) -> None:
    greedy = post(base_url, "/generate", {"inputs": "Say hello", "parameters": {"details": True}}).json()["details"]
    assert greedy["seed"] is None
    assert greedy["prefill"] == []
    assert "top_tokens" not in greedy
    assert all(t["logprob"] < 0 for t in greedy["tokens"])
    assert greedy["tokens"][-1] == {
        "id": 2,
        "text": "</s>",
        "logprob": greedy["tokens"][-1]["logprob"],
        "special": True,
    }

    again = post(base_url, "/generate", {"inputs": "Say hello", "parameters": {"details": True}}).json()["details"]
    assert again == greedy, "the dev server is deterministic"

    params = {"details": True, "do_sample": True, "seed": 42, "decoder_input_details": True, "top_n_tokens": 2}
    sampled = post(base_url, "/generate", {"inputs": "Say hello", "parameters": params}).json()["details"]
    assert sampled["seed"] == 42
    assert sampled["prefill"][0]["logprob"] is None
    assert [p["text"] for p in sampled["prefill"]] == ["Say", " hello"]
    assert all(
        len(row) == 2 and row[0] == tok for row, tok in zip(sampled["top_tokens"], sampled["tokens"], strict=True)
    )

    no_parameters = post(base_url, "/generate", {"inputs": "Say hello"}).json()
    assert "details" not in no_parameters


def test_non_stream_headers(base_url: str) -> None:
    response = post(base_url, "/generate", {"inputs": "Say hello", "parameters": {"details": True}})
    headers = response.headers
    assert headers["content-type"] == "application/json"
    assert headers["x-compute-type"] == "gpu+optimized"
    assert float(headers["x-compute-time"]) > 0
    assert "." in headers["x-compute-time"]
    for name in TIMING_HEADERS[1:]:
        assert re.fullmatch(r"\d+", headers[name]), name
    assert headers["x-compute-characters"] == "9"
    assert int(headers["x-prompt-tokens"]) == tokenizer.count("Say hello")
    assert int(headers["x-generated-tokens"]) == response.json()["details"]["generated_tokens"]
    assert "server" not in headers

    chat = post(base_url, "/v1/chat/completions", {"messages": [{"role": "user", "content": "Say hello"}]})
    assert all(name in chat.headers for name in TIMING_HEADERS)
    completions = post(base_url, "/v1/completions", {"prompt": "Say hello"})
    assert "x-compute-time" not in completions.headers, "TGI's completions route leaves it out"
    assert all(name in completions.headers for name in TIMING_HEADERS[1:])


def test_return_full_text_defaults(base_url: str, make_server: Any) -> None:
    prompt = "Say hello"
    compat = post(base_url, "/", {"inputs": prompt, "parameters": {"max_new_tokens": 2}}).json()
    assert compat == [{"generated_text": "Say helloHello from"}], "the compat route echoes the prompt by default"
    compat_off = post(base_url, "/", {"inputs": prompt, "parameters": {"max_new_tokens": 2, "return_full_text": False}})
    assert compat_off.json() == [{"generated_text": "Hello from"}]
    generate = post(base_url, "/generate", {"inputs": prompt, "parameters": {"max_new_tokens": 2}}).json()
    assert generate == {"generated_text": "Hello from"}, "/generate does not echo unless asked"
    assert httpx2.get(base_url + "/info").json()["model_pipeline_tag"] == "text-generation"

    with make_server(return_full_text_default=False) as url:
        assert post(url, "/", {"inputs": prompt, "parameters": {"max_new_tokens": 2}}).json() == [
            {"generated_text": "Hello from"}
        ]
        assert httpx2.get(url + "/info").json()["model_pipeline_tag"] == "text2text-generation"


def test_tokenize(base_url: str) -> None:
    text = "Hello,  world!\nNext"
    tokens = post(base_url, "/tokenize", {"inputs": text}).json()
    assert "".join(t["text"] for t in tokens) == text
    assert all(text[t["start"] : t["stop"]] == t["text"] for t in tokens)
    assert [t["text"] for t in tokens] == ["Hello", ",", "  world", "!", "\nNext"]
    assert tokens == post(base_url, "/tokenize", {"inputs": text}).json()
    assert all(t["id"] >= 3 for t in tokens)


# --------------------------------------------------------------------------------------------------
# Validation and rejections


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"max_new_tokens": 0}, "`max_new_tokens` must be strictly positive"),
        ({"temperature": 0}, "`temperature` must be strictly positive"),
        ({"temperature": -0.5}, "`temperature` must be strictly positive"),
        ({"top_p": 1.0}, "`top_p` must be > 0.0 and < 1.0"),
        ({"top_p": 0}, "`top_p` must be > 0.0 and < 1.0"),
        ({"top_k": 0}, "`top_k` must be strictly positive"),
        ({"typical_p": 1.5}, "`typical_p` must be > 0.0 and < 1.0"),
        ({"repetition_penalty": 0}, "`repetition_penalty` must be strictly positive"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "`stop` supports up to 4 stop sequences. Given: 5"),
        (
            {"max_new_tokens": 8190},
            "`inputs` tokens + `max_new_tokens` must be <= 8192. Given: 3 `inputs` tokens and 8190 `max_new_tokens`",
        ),
        (
            {"grammar": {"type": "json", "value": {"type": "object"}}},
            "grammar is not valid: Grammar must have a 'properties' field",
        ),
        ({"top_n_tokens": 9}, "`top_n_tokens` must be >= 0 and <= 5. Given: 9"),
        ({"best_of": 2}, "you must use sampling when `best_of` is > 1"),
    ],
)
def test_validation_errors(base_url: str, parameters: dict[str, Any], message: str) -> None:
    response = post(base_url, "/generate", {"inputs": "one two three", "parameters": parameters})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": f"Input validation error: {message}", "error_type": "validation"}


def test_streaming_only_validation_errors_are_in_band(base_url: str, parse_sse: Parse) -> None:
    response, raw = stream_raw(
        base_url, "/generate_stream", {"inputs": "x", "parameters": {"decoder_input_details": True}}
    )
    assert response.status_code == 200
    assert raw == (
        b'data:{"error":"Input validation error: `decoder_input_details` == true is not supported when streaming '
        b'tokens","error_type":"validation"}\n\n'
    )
    accepted = post(
        base_url, "/generate", {"inputs": "x", "parameters": {"decoder_input_details": True, "max_new_tokens": 1}}
    )
    assert accepted.status_code == 200

    response, raw = stream_raw(
        base_url,
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x"}], "stream": True, "temperature": -1},
    )
    assert response.status_code == 200
    assert parse_sse(raw) == [
        {
            "error": {
                "message": "Input validation error: `temperature` must be strictly positive",
                "http_status_code": 422,
            }
        },
        "[DONE]",
    ]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "text"),
    [
        (b"{}", None, 415, "Expected request with `Content-Type: application/json`"),
        (b"{}", "text/plain", 415, "Expected request with `Content-Type: application/json`"),
        (b'{"inputs": "x"', "application/json", 400, None),
        (
            b"not json",
            "application/json",
            400,
            "Failed to parse the request body as JSON: expected value at line 1 column 1",
        ),
        (
            b"{}",
            "application/json",
            422,
            "Failed to deserialize the JSON body into the target type: missing field `inputs` at line 1 column 2",
        ),
        (
            b'{"parameters": {}}',
            "application/json",
            422,
            "Failed to deserialize the JSON body into the target type: missing field `inputs` at line 1 column 18",
        ),
        (
            b'{"inputs": 5}',
            "application/json",
            422,
            "Failed to deserialize the JSON body into the target type: inputs: invalid type: integer `5`, "
            "expected a string at line 1 column 12",
        ),
        (
            b'{"inputs": "x", "parameters": {"max_new_tokens": -1}}',
            "application/json",
            422,
            "Failed to deserialize the JSON body into the target type: parameters.max_new_tokens: invalid value: "
            "integer `-1`, expected u32 at line 1 column 51",
        ),
        (b'{"inputs": "x"}', "application/vnd.api+json", 200, None),
    ],
)
def test_extractor_rejections_are_plain_text(
    base_url: str, body: bytes, content_type: str | None, status: int, text: str | None
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = httpx2.post(base_url + "/generate", content=body, headers=headers)
    assert response.status_code == status, response.text
    if status != 200:
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
        assert response.text.startswith("Failed to parse") if text is None else response.text == text


def test_chat_rejections(base_url: str) -> None:
    missing = httpx2.post(base_url + "/v1/chat/completions", json={"model": "tgi"})
    assert missing.status_code == 422
    assert missing.text.endswith("missing field `messages` at line 1 column 15")
    null_options = post(base_url, "/v1/chat/completions", {"messages": [], "stream_options": None})
    assert null_options.status_code == 422
    assert "stream_options: invalid type: null, expected struct StreamOptions" in null_options.text
    both = post(
        base_url,
        "/v1/chat/completions",
        {
            "messages": [{"role": "user", "content": "x"}],
            "stream": True,
            "response_format": {"type": "json", "value": {"properties": {}}},
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        },
    )
    assert both.status_code == 422, "tool errors come before streaming starts"
    assert both.json() == {"error": "Tool error: Grammar and tools are mutually exclusive", "error_type": "tool_error"}


def test_payload_limit(make_server: Any) -> None:
    with make_server(payload_limit=1000) as url:
        small = post(url, "/generate", {"inputs": "x" * 500, "parameters": {"max_new_tokens": 1}})
        assert small.status_code == 200
        big = post(url, "/generate", {"inputs": "x" * 2000})
        assert big.status_code == 413
        assert big.text == "Failed to buffer the request body: length limit exceeded"


def test_api_key(make_server: Any) -> None:
    with make_server(api_key="s3cret") as url:
        body = {"inputs": "x", "parameters": {"max_new_tokens": 1}}
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "s3cret"}):
            response = httpx2.post(url + "/generate", json=body, headers=headers)
            assert response.status_code == 401
            assert response.content == b""
        assert httpx2.post(url + "/generate", json=body, headers={"authorization": "bearer S3CRET"}).status_code == 200
        for path in ("/info", "/health", "/metrics", "/v1/models"):
            assert httpx2.get(url + path).status_code == 200, path
        assert httpx2.post(url + "/embed", json={"inputs": "x"}).status_code == 401


def test_unknown_routes_and_methods(base_url: str) -> None:
    for method, path, status in (("GET", "/nope", 404), ("POST", "/v2/generate", 404), ("GET", "/generate", 405)):
        response = httpx2.request(method, base_url + path)
        assert response.status_code == status
        assert response.content == b""


# --------------------------------------------------------------------------------------------------
# Concurrency, overload, timing


async def _open_streams(url: str, count: int, body: dict[str, Any]) -> list[bytes]:
    limits = httpx2.Limits(max_connections=count + 8)
    async with httpx2.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

        async def one() -> bytes:
            async with client.stream("POST", "/generate_stream", json=body) as response:
                return b"".join([chunk async for chunk in response.aiter_raw()])

        return await asyncio.gather(*(one() for _ in range(count)))


def test_many_concurrent_streams_are_not_serialised(make_server: Any, parse_sse: Parse) -> None:
    ttft_ms, tpot_ms, tokens, streams = 150, 25, 10, 64
    body = {"inputs": "Tell me a story", "parameters": {"max_new_tokens": tokens}}
    with make_server(ttft_ms=ttft_ms, tpot_ms=tpot_ms) as url:
        started = time.perf_counter()
        bodies = asyncio.run(_open_streams(url, streams, body))
        elapsed = time.perf_counter() - started
    one_stream = (ttft_ms + (tokens - 1) * tpot_ms) / 1000
    assert all(len(parse_sse(b)) == tokens for b in bodies)
    assert elapsed >= one_stream * 0.9, "streams must be paced"
    assert elapsed < one_stream * 6, f"{streams} streams took {elapsed:.2f}s; one takes {one_stream:.2f}s"


def test_concurrency_limit_answers_overloaded(make_server: Any, parse_sse: Parse) -> None:
    async def scenario(url: str) -> None:
        async with httpx2.AsyncClient(base_url=url, timeout=10) as client:
            body = {"inputs": "STOP-TEST", "parameters": {"max_new_tokens": 3}}
            holders = [asyncio.create_task(client.post("/generate", json=body)) for _ in range(2)]
            await asyncio.sleep(0.15)  # both admitted, both still in their time to first token
            refused = await client.post("/generate", json=body)
            assert refused.status_code == 429
            assert refused.json() == {"error": "Model is overloaded", "error_type": "overloaded"}
            in_band = await client.post("/generate_stream", json=body)
            assert in_band.status_code == 200
            assert parse_sse(in_band.content) == [{"error": "Model is overloaded", "error_type": "overloaded"}]
            chat = await client.post(
                "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}], "stream": True}
            )
            assert parse_sse(chat.content) == [
                {"error": {"message": "Model is overloaded", "http_status_code": 422}},
                "[DONE]",
            ]
            for holder in holders:
                assert (await holder).status_code == 200
            assert (await client.post("/generate", json=body)).status_code == 200

    with make_server(max_concurrent_requests=2, ttft_ms=600) as url:
        asyncio.run(scenario(url))
        metrics = httpx2.get(url + "/metrics").text
        assert 'tgi_request_failure{err="overloaded"} 3' in metrics


def test_time_to_first_token_and_time_per_token(make_server: Any) -> None:
    with make_server(ttft_ms=200, tpot_ms=50) as url:
        arrivals: list[float] = []
        started = time.perf_counter()
        body = {"inputs": "STOP-TEST", "parameters": {"max_new_tokens": 4}}
        with httpx2.stream("POST", url + "/generate_stream", json=body) as response:
            for line in response.iter_lines():
                if line.startswith("data:"):
                    arrivals.append(time.perf_counter() - started)
    assert len(arrivals) == 4
    assert 0.18 <= arrivals[0] < 0.6
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert all(0.03 <= gap < 0.3 for gap in gaps), gaps


def test_keep_alive_comment_while_waiting(make_server: Any, split_sse: Split) -> None:
    with make_server(ttft_ms=300, keep_alive_seconds=0.1) as url:
        _, raw = stream_raw(url, "/generate_stream", {"inputs": "x", "parameters": {"max_new_tokens": 1}})
    frames = split_sse(raw)
    assert frames[0] == b":", "axum's default keep-alive is an empty comment"
    assert frames.count(b":") >= 2
    assert frames[-1].startswith(b"data:{")


# --------------------------------------------------------------------------------------------------
# Faults


def test_midstream_fault_generate_stream(base_url: str, parse_sse: Parse) -> None:
    response, raw = stream_raw(base_url, "/generate_stream", {"inputs": "FAULT-MIDSTREAM", "parameters": {}})
    assert response.status_code == 200
    events = parse_sse(raw)
    assert [e["token"]["text"] for e in events[:-1]] == ["one", " two"]
    assert events[-1] == {
        "error": "Request failed during generation: injected fault (AIOS development server): the model backend failed",
        "error_type": "generation",
    }


def test_midstream_fault_by_header_on_chat(base_url: str, parse_sse: Parse) -> None:
    headers = {"x-aios-fault": "midstream", "x-aios-fault-after-tokens": "1"}
    body = {"messages": [{"role": "user", "content": "Say hello"}], "stream": True}
    _, raw = stream_raw(base_url, "/v1/chat/completions", body, **headers)
    events = parse_sse(raw)
    assert events[0]["choices"][0]["delta"]["content"] == "Hello"
    assert events[1]["error"]["message"].startswith("Request failed during generation")
    assert events[1]["error"]["http_status_code"] == 422
    assert events[2] == "[DONE]"
    assert len(events) == 3


def test_script_faults(base_url: str) -> None:
    overloaded = post(base_url, "/generate", {"inputs": "FAULT-OVERLOADED"})
    assert overloaded.status_code == 429
    generation = post(base_url, "/v1/chat/completions", {"messages": [{"role": "user", "content": "FAULT-GENERATION"}]})
    assert generation.status_code == 424
    assert generation.json()["error_type"] == "generation"


def test_timeout_fault_stalls_past_the_client_timeout(base_url: str) -> None:
    started = time.perf_counter()
    with pytest.raises(httpx2.ReadTimeout):
        post_timeout = httpx2.post(
            base_url + "/generate", json={"inputs": "x"}, headers={"x-aios-fault": "timeout"}, timeout=0.4
        )
        del post_timeout
    assert time.perf_counter() - started < 2
    with (
        pytest.raises(httpx2.ReadTimeout),
        httpx2.stream("POST", base_url + "/generate_stream", json={"inputs": "FAULT-TIMEOUT"}, timeout=0.4) as response,
    ):
        assert response.status_code == 200, "headers go out before the stall"
        response.read()


# --------------------------------------------------------------------------------------------------
# Reply selection


def chat(base_url: str, content: str, **extra: Any) -> dict[str, Any]:
    response = post(base_url, "/v1/chat/completions", {"messages": [{"role": "user", "content": content}], **extra})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_scripted_rules(base_url: str) -> None:
    assert chat(base_url, "Say hello please")["choices"][0]["message"]["content"] == "Hello from the script."
    assert chat(base_url, "Please WHISPER it")["choices"][0]["message"]["content"] == "quiet reply"
    assert chat(base_url, "x ROUTE-CHECK y")["choices"][0]["message"]["content"] == "Chat route reply."
    generated = post(base_url, "/generate", {"inputs": "x ROUTE-CHECK y"}).json()["generated_text"]
    assert generated.startswith(FALLBACK_PREFIX), "the rule is limited to the chat route"
    assert json.loads(chat(base_url, "JSON-RULE")["choices"][0]["message"]["content"]) == {"answer": 42}


def test_fallback_is_deterministic_and_labelled(base_url: str) -> None:
    first = chat(base_url, "Summarise this.\nWhat is the status of order 17?")["choices"][0]["message"]["content"]
    second = chat(base_url, "Summarise this.\nWhat is the status of order 17?")["choices"][0]["message"]["content"]
    assert first == second
    assert first.startswith(FALLBACK_PREFIX)
    assert "What is the status of order 17?" in first


SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"type": "integer", "minimum": 100},
        "label": {"type": "string", "enum": ["yes", "no"]},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        "nested": {"$ref": "#/$defs/Nested"},
        "ok": {"type": "boolean"},
        "maybe": {"anyOf": [{"type": "null"}, {"type": "number", "exclusiveMinimum": 0.5}]},
    },
    "required": ["answer", "label", "tags", "nested", "ok"],
    "additionalProperties": False,
    "$defs": {"Nested": {"type": "object", "properties": {"when": {"type": "string", "format": "date"}}}},
}


@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "json_object", "value": SCHEMA},
        {"type": "json", "value": json.dumps(SCHEMA)},
        {"type": "json_schema", "value": {"name": "s", "schema": SCHEMA}},
    ],
)
def test_schema_requests_get_valid_json(base_url: str, response_format: dict[str, Any]) -> None:
    # JSON-RULE's scripted {"answer": 42} violates the schema (minimum 100), so the schema value wins.
    content = chat(base_url, "JSON-RULE", response_format=response_format)["choices"][0]["message"]["content"]
    value = json.loads(content)
    jsonschema.validate(value, SCHEMA)
    assert value["label"] == "yes" and value["ok"] is False and len(value["tags"]) == 2
    grammar = {"type": "json", "value": SCHEMA}
    generated = post(base_url, "/generate", {"inputs": "anything", "parameters": {"grammar": grammar}}).json()
    jsonschema.validate(json.loads(generated["generated_text"]), SCHEMA)


def test_scripted_json_kept_when_it_fits_the_schema(base_url: str) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
    content = chat(base_url, "JSON-RULE", response_format={"type": "json_object", "value": schema})
    assert json.loads(content["choices"][0]["message"]["content"]) == {"answer": 42}


def test_regex_grammar(base_url: str) -> None:
    grammar = {"type": "regex", "value": r"(yes|no) [A-Z]{3}-\d{2}"}
    text = post(base_url, "/generate", {"inputs": "anything", "parameters": {"grammar": grammar}}).json()[
        "generated_text"
    ]
    assert re.fullmatch(grammar["value"], text)


@pytest.mark.parametrize(
    ("policy", "claimant", "incident_type", "amount", "injury"),
    [
        ("POL-10442", "Maria Lopez", "auto", 850.0, False),
        ("POL-20917", "Tom Becker", "property", 12400.0, False),
        ("POL-31808", "Aisha Khan", "injury", 23800.0, True),
        ("POL-48230", "Daniel Park", "theft", 640.0, False),
    ],
)
def test_demo_claims_script(
    base_url: str, policy: str, claimant: str, incident_type: str, amount: float, injury: bool
) -> None:
    prompt = f"Extract the claim fields as JSON.\n\nClaim text: Policy {policy}. Filed by {claimant}."
    fmt = {"type": "json_object", "value": CLAIM_SCHEMA}
    for content in (
        chat(base_url, prompt, response_format=fmt)["choices"][0]["message"]["content"],
        post(base_url, "/generate", {"inputs": prompt, "parameters": {"grammar": fmt}}).json()["generated_text"],
    ):
        value = json.loads(content)
        jsonschema.validate(value, CLAIM_SCHEMA)
        assert (value["claimant"], value["policy_number"]) == (claimant, policy)
        assert (value["incident_type"], value["amount"], value["injury_reported"]) == (incident_type, amount, injury)


def test_tool_call_minimal(base_url: str) -> None:
    tools = [{"type": "function", "function": {"name": "file_claim", "parameters": CLAIM_SCHEMA}}]
    message = chat(base_url, "POL-10442", tools=tools, tool_choice="required")["choices"][0]["message"]
    call = message["tool_calls"][0]
    assert call["function"]["name"] == "file_claim"
    assert call["function"]["arguments"]["claimant"] == "Maria Lopez"
    assert "content" not in message


# --------------------------------------------------------------------------------------------------
# Embeddings, metrics, models


def test_embeddings_are_deterministic_normalised_and_similarity_preserving(base_url: str) -> None:
    # The first embedding request loads the model (when installed): give that one time.
    assert httpx2.post(base_url + "/embed", json={"inputs": "warm up"}, timeout=120).status_code == 200
    texts = [
        "The customer's car was hit from behind in a parking lot.",
        "A car was rear-ended in the parking lot; the customer filed a claim.",
        "Quarterly revenue grew by four percent in the northern region.",
    ]
    vectors = post(base_url, "/embed", {"inputs": texts}).json()
    assert len(vectors) == 3 and all(len(v) == 384 for v in vectors)
    assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-4) for v in vectors)
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.2
    # The same request gives the same vectors exactly; a text embedded alone or in a batch gives the same
    # vector up to float rounding (with the real model, padding in a batch changes the last digits, as on TEI).
    assert post(base_url, "/embed", {"inputs": texts}).json() == vectors
    (alone,) = post(base_url, "/embed", {"inputs": texts[0]}).json()
    assert alone == pytest.approx(vectors[0], abs=1e-5)
    raw = post(base_url, "/embed", {"inputs": texts[0], "normalize": False}).json()[0]
    assert not math.isclose(sum(x * x for x in raw), 1.0, rel_tol=1e-3)
    short = post(base_url, "/embed", {"inputs": texts[0], "dimensions": 64}).json()[0]
    assert len(short) == 64


def test_metrics_use_tgi_names(base_url: str) -> None:
    before = httpx2.get(base_url + "/metrics").text
    post(base_url, "/generate", {"inputs": "x", "parameters": {"max_new_tokens": 1}})
    after = httpx2.get(base_url + "/metrics").text
    for name in (
        "tgi_request_count",
        "tgi_request_success",
        "tgi_request_failure",
        "tgi_request_duration_bucket",
        "tgi_request_generated_tokens_count",
        "tgi_request_input_length_sum",
        "tgi_queue_size",
        "tgi_batch_current_size",
    ):
        assert name in after, name

    def value(text: str, name: str) -> float:
        match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
        assert match, name
        return float(match.group(1))

    assert value(after, "tgi_request_success") == value(before, "tgi_request_success") + 1
    # Every permit is released (stalled requests from fault tests let go once their clients hang up).
    deadline = time.monotonic() + 3
    while value(after, "tgi_batch_current_size") and time.monotonic() < deadline:
        time.sleep(0.05)
        after = httpx2.get(base_url + "/metrics").text
    assert value(after, "tgi_batch_current_size") == 0
    assert value(after, "tgi_batch_current_max_tokens") == 0


# --------------------------------------------------------------------------------------------------
# The process itself


def test_startup_line_and_configuration_sources(devserver: Any, base_url: str) -> None:
    log = devserver.log_path.read_text()
    assert re.search(
        r"AIOS development inference server \(not a language model\) listening on http://127\.0\.0\.1:\d+", log
    )
    assert "ttft 3 ms" in log, "the --ttft-ms flag wins over AIOS_DEVSERVER_TTFT_MS"
    assert httpx2.get(base_url + "/info").json()["model_id"] == "aios/test-model", "environment is read"
    started = time.perf_counter()
    post(base_url, "/generate", {"inputs": "x", "parameters": {"max_new_tokens": 1}})
    assert time.perf_counter() - started < 2


def test_cli_rejects_a_broken_script(tmp_path: Any) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"rules": [{"match": {"regex": "("}, "response": "x"}]}')
    result = subprocess.run(
        [sys.executable, "-m", "devserver", "--port", "0", "--script", str(broken)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 2
    assert "rule 1: 'match.regex' is not a valid regular expression" in result.stderr


def test_cli_help_names_the_environment_variables() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "devserver", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0
    assert "AIOS_DEVSERVER_TTFT_MS" in result.stdout
    assert "--max-concurrent-requests" in result.stdout


def test_script_loaded_inline(make_server: Any) -> None:
    script = Script.from_data({"rules": [{"match": {"contains": "ping"}, "response": "pong"}]})
    with make_server(script=script) as url:
        assert post(url, "/generate", {"inputs": "ping"}).json()["generated_text"] == "pong"
