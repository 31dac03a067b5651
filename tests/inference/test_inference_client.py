"""apps.inference.client against the development server (and a few deliberately broken servers)."""

from __future__ import annotations

import asyncio
import json
import pickle
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx2
import jsonschema
import pytest
from huggingface_hub import errors as hf_errors

from apps.inference import client
from apps.inference.errors import (
    InferenceAuthenticationError,
    InferenceConnectionError,
    InferenceError,
    InferenceGenerationError,
    InferenceOverloadedError,
    InferenceTimeoutError,
    InferenceUnavailableError,
    InferenceValidationError,
)
from apps.workflows.demo import CLAIM_FIELDS_SCHEMA as CLAIM_SCHEMA
from devserver import tokenizer
from tests.inference.shapes import Shape, call

PROMPT = "Say hello"
REPLY = "Hello from the script."
MESSAGES = [{"role": "user", "content": PROMPT}]
GENERATE_STREAM: Shape = ("generate", True)
CHAT_STREAM: Shape = ("chat", True)
CHAT: Shape = ("chat", False)


# --------------------------------------------------------------------------------------------------
# Happy paths


def test_generate_stream(base_url: str) -> None:
    tokens: list[str] = []
    result = call(GENERATE_STREAM, base_url, PROMPT, received=tokens, model_id="aios/test-model")
    assert result.text == REPLY, "return_full_text=False: the prompt is not echoed even on TGI's `/`"
    assert tokens == tokenizer.split(REPLY), "special tokens are not passed to on_token"
    assert result.generated_tokens == len(tokens) + 1
    assert result.prompt_tokens == tokenizer.count(PROMPT)
    assert result.finish_reason == "stop"
    assert result.model_id == "aios/test-model"
    assert result.seed is None
    assert result.ttft_ms is not None and 0 < result.ttft_ms <= result.latency_ms
    assert json.loads(json.dumps(result.to_dict()))["text"] == REPLY


def test_generate_stream_parameters(base_url: str) -> None:
    result = call(GENERATE_STREAM, base_url, "STOP-TEST", max_tokens=50, stop=["."], temperature=0.5, seed=11)
    assert (result.text, result.finish_reason, result.seed) == ("alpha beta.", "stop_sequence", 11)
    capped = call(GENERATE_STREAM, base_url, "STOP-TEST", max_tokens=2)
    assert (capped.text, capped.finish_reason, capped.generated_tokens) == ("alpha beta", "length", 2)
    grammar = {"type": "json", "value": CLAIM_SCHEMA}
    extracted = call(GENERATE_STREAM, base_url, "Claim POL-31808", max_tokens=300, grammar=grammar)
    value = json.loads(extracted.text)
    jsonschema.validate(value, CLAIM_SCHEMA)
    assert value["claimant"] == "Aisha Khan" and value["injury_reported"] is True


def test_chat_stream_survives_the_done_sentinel(base_url: str) -> None:
    tokens: list[str] = []
    result = call(CHAT_STREAM, base_url, PROMPT, received=tokens, seed=4)
    assert result.text == REPLY == "".join(tokens)
    assert result.finish_reason == "stop"
    assert result.generated_tokens == len(tokenizer.split(REPLY)) + 1
    assert result.prompt_tokens is not None and result.prompt_tokens > 0
    assert result.seed == 4
    assert result.model_id is None, "TGI echoes huggingface_hub's placeholder model name"
    named = call(CHAT_STREAM, base_url, PROMPT, received=tokens, max_tokens=2, model="served/name")
    assert (named.model_id, named.finish_reason, named.generated_tokens) == ("served/name", "length", 2)


def test_chat_stream_structured_output(base_url: str) -> None:
    for response_format in (
        {"type": "json_object", "value": CLAIM_SCHEMA},
        {"type": "json_schema", "json_schema": {"name": "claim", "schema": CLAIM_SCHEMA}},
    ):
        result = call(
            CHAT_STREAM,
            base_url,
            "Extract the fields of claim POL-48230 as JSON.",
            max_tokens=300,
            response_format=response_format,
        )
        value = json.loads(result.text)
        jsonschema.validate(value, CLAIM_SCHEMA)
        assert value["claimant"] == "Daniel Park"


def test_coroutine_callbacks_concurrent_calls_and_embeddings(base_url: str) -> None:
    async def scenario() -> None:
        endpoint = client.Endpoint(base_url)
        received: list[str] = []

        async def on_token(text: str) -> None:
            received.append(text)

        generated = await client.agenerate_stream(
            endpoint, client.GenerateRequest(PROMPT, max_new_tokens=50), on_token=on_token
        )
        assert generated.text == REPLY == "".join(received)
        received.clear()
        chat = client.ChatRequest(MESSAGES, max_tokens=50)
        chatted = await client.achat_stream(endpoint, chat, on_token=received.append)
        assert chatted.text == REPLY == "".join(received)
        assert chatted.finish_reason == "stop"
        results = await asyncio.gather(
            *(client.achat_stream(endpoint, chat, on_token=lambda t: None) for _ in range(8))
        )
        assert {r.text for r in results} == {REPLY}
        vectors = await client.aembed(endpoint, ["one", "two"])
        assert [len(v) for v in vectors] == [384, 384]

    asyncio.run(scenario())


def test_async_calls_can_share_one_http_client(base_url: str) -> None:
    async def scenario() -> None:
        async with client.new_async_http_client() as http:
            endpoint = client.Endpoint(base_url, http_client=http)
            chat = client.ChatRequest(MESSAGES, max_tokens=50)
            results = await asyncio.gather(
                *(client.achat_stream(endpoint, chat, on_token=lambda t: None) for _ in range(6)),
                client.agenerate_stream(
                    endpoint, client.GenerateRequest(PROMPT, max_new_tokens=50), on_token=lambda t: None
                ),
            )
            assert {r.text for r in results} == {REPLY}
            with pytest.raises(InferenceGenerationError):
                await client.agenerate_stream(
                    endpoint, client.GenerateRequest("FAULT-MIDSTREAM", max_new_tokens=9), on_token=lambda t: None
                )
            assert not http.is_closed, "the shared client outlives each call"
            assert len(await client.aembed(endpoint, ["x"])) == 1
            again = await client.achat_stream(endpoint, chat, on_token=lambda t: None)
            assert again.text == REPLY

    asyncio.run(scenario())


def test_server_info_served_models_and_embed(base_url: str) -> None:
    info = client.server_info(base_url)
    assert info["model_id"] == "aios/test-model"
    assert info["docker_label"] == "aios-devserver"
    served = client.served_model_info(base_url, served_model="aios/test-model")
    assert served == {"model_id": "aios/test-model", "max_total_tokens": None}
    assert client.served_model_info(base_url, served_model="another")["model_id"] == "aios/test-model", (
        "a name the server does not list falls back to the first model it does"
    )
    vectors = asyncio.run(client.aembed(client.Endpoint(base_url), ["a car accident", "a car crash"]))
    assert len(vectors) == 2 and all(len(v) == 384 for v in vectors)
    assert all(isinstance(x, float) for x in vectors[0])
    assert asyncio.run(client.aembed(client.Endpoint(base_url), [])) == []


def test_default_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIOS_INFERENCE_URL", "http://127.0.0.1:59999")
    try:
        from django.conf import settings

        configured = settings.configured and getattr(settings, "AIOS_INFERENCE_URL", None)
    except ImportError:
        configured = None
    assert client.default_base_url() == (configured or "http://127.0.0.1:59999")


# --------------------------------------------------------------------------------------------------
# Errors


def test_validation_errors(base_url: str) -> None:
    with pytest.raises(InferenceValidationError) as generate_error:
        call(GENERATE_STREAM, base_url, PROMPT, max_tokens=0)
    assert "`max_new_tokens` must be strictly positive" in str(generate_error.value)
    assert generate_error.value.base_url == base_url
    assert generate_error.value.retryable is False
    with pytest.raises(InferenceValidationError, match="`temperature` must be strictly positive"):
        call(CHAT_STREAM, base_url, PROMPT, max_tokens=5, temperature=-1.0)
    with pytest.raises(InferenceValidationError, match="HTTP 422"):
        call(CHAT_STREAM, base_url, PROMPT, max_tokens=5, response_format={"type": "json_object"})


@pytest.mark.parametrize(
    ("prompt", "error"),
    [("FAULT-OVERLOADED", InferenceOverloadedError), ("FAULT-GENERATION", InferenceGenerationError)],
)
def test_faults_are_typed_on_both_paths(base_url: str, prompt: str, error: type[InferenceError]) -> None:
    with pytest.raises(error) as generate_error:
        call(GENERATE_STREAM, base_url, prompt, max_tokens=5)
    assert generate_error.value.retryable is True
    with pytest.raises(error):
        call(CHAT_STREAM, base_url, prompt, max_tokens=5)


def test_midstream_failure_after_some_tokens(base_url: str) -> None:
    received: list[str] = []
    with pytest.raises(InferenceGenerationError, match="failed while generating"):
        call(CHAT_STREAM, base_url, "FAULT-MIDSTREAM", received=received, max_tokens=50)
    assert received == ["one", " two"]
    received.clear()
    with pytest.raises(InferenceGenerationError):
        call(GENERATE_STREAM, base_url, "FAULT-MIDSTREAM", received=received, max_tokens=50)
    assert received == ["one", " two"]


def test_timeouts(base_url: str) -> None:
    with pytest.raises(InferenceTimeoutError, match=r"did not respond within 0\.5 seconds"):
        call(GENERATE_STREAM, base_url, "FAULT-TIMEOUT", max_tokens=5, timeout=0.5)
    with pytest.raises(InferenceTimeoutError):
        call(CHAT_STREAM, base_url, "FAULT-TIMEOUT", max_tokens=5, timeout=0.5)


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_connection_refused() -> None:
    url = f"http://127.0.0.1:{unused_port()}"
    expected = f"The inference server at {url} is not reachable (connection refused)."
    for attempt in (
        lambda: call(GENERATE_STREAM, url, "x", max_tokens=1),
        lambda: call(CHAT_STREAM, url, "x", max_tokens=1),
        lambda: client.server_info(url),
        lambda: client.served_model_info(url),
        lambda: asyncio.run(client.aembed(client.Endpoint(url), ["x"])),
    ):
        with pytest.raises(InferenceConnectionError) as error:
            attempt()
        assert str(error.value) == expected


def test_api_key(make_server: Any) -> None:
    with make_server(api_key="k3y") as url:
        with pytest.raises(InferenceAuthenticationError, match="refused the credentials"):
            call(CHAT_STREAM, url, PROMPT, max_tokens=3)
        with pytest.raises(InferenceAuthenticationError):
            call(GENERATE_STREAM, url, "x", max_tokens=3, token="wrong")
        result = call(GENERATE_STREAM, url, PROMPT, max_tokens=3, token="k3y")
        assert result.text == "Hello from the"
        assert client.server_info(url)["model_id"] == "aios/dev-model", "/info needs no key"
    assert "k3y" not in repr(client.Endpoint(url, token="k3y")), "an endpoint in a log line carries no key"


def test_on_token_errors_propagate_unchanged(base_url: str) -> None:
    class Stop(Exception):
        pass

    def explode(text: str) -> None:
        raise Stop(text)

    with pytest.raises(Stop):
        call(GENERATE_STREAM, base_url, PROMPT, max_tokens=5, on_token=explode)
    with pytest.raises(Stop):
        call(CHAT_STREAM, base_url, PROMPT, max_tokens=5, on_token=explode)


# --------------------------------------------------------------------------------------------------
# Broken servers: a JSON decode error before the finish is a failure, not the end; a redirect is refused


class _Scripted(BaseHTTPRequestHandler):
    body = b""
    requests: list[str] = []

    def do_POST(self) -> None:
        self.requests.append(self.path)
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("content-length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    do_GET = do_POST

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Redirecting(_Scripted):
    target = ""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(307)
        self.send_header("location", self.target + self.path)
        self.send_header("content-length", "0")
        self.end_headers()

    do_GET = do_POST


@contextmanager
def serving(body: bytes = b"", handler: type[_Scripted] = _Scripted, **attributes: Any) -> Iterator[str]:
    """Serve `body` to every request (or let `handler` answer) on a loopback port for the block."""
    handler = type("Handler", (handler,), {"body": body, "requests": [], **attributes})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_unreadable_chat_stream_before_finish_is_an_error() -> None:
    chunk = {
        "object": "chat.completion.chunk",
        "id": "",
        "created": 1,
        "model": "m",
        "system_fingerprint": "x",
        "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": "Hi"}, "logprobs": None, "finish_reason": None}
        ],
        "usage": None,
    }
    body = b"data:" + json.dumps(chunk).encode() + b"\n\ndata:[DONE]\n\n"
    with serving(body) as url, pytest.raises(InferenceGenerationError, match="unreadable reply"):
        call(CHAT_STREAM, url, PROMPT, max_tokens=5)


def test_chat_stream_from_a_server_with_a_proper_sentinel() -> None:
    # vLLM-style: usage not sent, and "data: [DONE]" with a space, which huggingface_hub understands.
    chunk = {
        "id": "x",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "served/model",
        "system_fingerprint": "",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}],
    }
    body = b"data: " + json.dumps(chunk).encode() + b"\n\ndata: [DONE]\n\n"
    with serving(body) as url:
        result = call(CHAT_STREAM, url, PROMPT, max_tokens=5)
    assert (result.text, result.finish_reason, result.prompt_tokens, result.model_id) == (
        "Hi",
        "stop",
        None,
        "served/model",
    )


def test_generation_stream_without_a_final_event_is_an_error() -> None:
    event = {
        "index": 1,
        "token": {"id": 5, "text": "Hi", "logprob": -0.1, "special": False},
        "generated_text": None,
        "details": None,
    }
    with (
        serving(b"data:" + json.dumps(event).encode() + b"\n\n") as url,
        pytest.raises(InferenceGenerationError, match="ended the reply before the generation finished"),
    ):
        call(GENERATE_STREAM, url, "x", max_tokens=5)


def test_redirects_are_never_followed() -> None:
    # A model server must not be able to send a prompt, or the endpoint's key, on to another host.
    reached: list[str] = []

    async def through_a_shared_client(url: str) -> None:  # the product's way
        async with client.new_async_http_client(max_connections=4) as http:
            endpoint = client.Endpoint(url, token="k", http_client=http)
            await client.achat_stream(endpoint, client.ChatRequest(MESSAGES, max_tokens=5), on_token=print)

    with serving(requests=reached) as elsewhere, serving(handler=_Redirecting, target=elsewhere) as url:
        for attempt in (
            lambda: asyncio.run(through_a_shared_client(url)),
            lambda: call(GENERATE_STREAM, url, PROMPT, token="k"),
            lambda: call(CHAT, url, PROMPT, token="k"),
            lambda: client.server_info(url, token="k"),
            lambda: client.served_model_info(url, token="k"),
        ):
            with pytest.raises(InferenceError) as error:
                attempt()
            assert type(error.value) is InferenceError and error.value.retryable is False
            message = error.value.message
            assert message.startswith(
                f"The inference server at {url} answered with a redirect (HTTP 307) to {elsewhere}/"
            )
            assert message.endswith(", which is not followed; set the endpoint's URL to the address it points to.")
    assert reached == []


# --------------------------------------------------------------------------------------------------
# Error objects


@pytest.mark.parametrize(
    "error_class",
    [
        InferenceError,
        InferenceValidationError,
        InferenceOverloadedError,
        InferenceGenerationError,
        InferenceTimeoutError,
        InferenceConnectionError,
        InferenceAuthenticationError,
        InferenceUnavailableError,
    ],
)
def test_errors_pickle(error_class: type[InferenceError]) -> None:
    error = error_class(
        "The inference server is busy.",
        base_url="http://x",
        status_code=429,
        server_message="busy",
        attempts=3,
        tokens_delivered=2,
    )
    restored = pickle.loads(pickle.dumps(error))
    assert type(restored) is error_class
    assert (
        restored.message,
        restored.base_url,
        restored.status_code,
        restored.server_message,
        restored.attempts,
        restored.tokens_delivered,
    ) == ("The inference server is busy.", "http://x", 429, "busy", 3, 2)
    assert str(restored) == "The inference server is busy."


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, InferenceValidationError),
        (413, InferenceValidationError),
        (401, InferenceAuthenticationError),
        (404, InferenceError),
        (429, InferenceOverloadedError),
        (502, InferenceUnavailableError),
        (503, InferenceUnavailableError),
        (504, InferenceTimeoutError),
        (307, InferenceError),
        (500, InferenceGenerationError),
        (424, InferenceGenerationError),
    ],
)
def test_http_statuses_map_to_types(status: int, error_class: type[InferenceError]) -> None:
    response = httpx2.Response(status, request=httpx2.Request("POST", "http://srv/generate"), text="server words")
    error = client.translate_error(hf_errors.HfHubHTTPError("boom", response=response), base_url="http://srv")
    assert type(error) is error_class
    assert error.status_code == status
    assert "http://srv" in error.message


def test_transport_errors_map_to_types() -> None:
    request = httpx2.Request("POST", "http://srv")
    cases = [
        (httpx2.ConnectTimeout("t", request=request), InferenceConnectionError, "connection timed out"),
        (httpx2.ReadTimeout("t", request=request), InferenceTimeoutError, "did not respond within 7 seconds"),
        (httpx2.RemoteProtocolError("closed", request=request), InferenceConnectionError, "closed the connection"),
        (
            httpx2.ConnectError("[Errno -2] Name or service not known"),
            InferenceConnectionError,
            "could not be resolved",
        ),
    ]
    for exc, error_class, text in cases:
        error = client.translate_error(exc, base_url="http://srv", timeout=7)
        assert type(error) is error_class and text in error.message
