"""Injected faults on every generation route and on TEI's routes: status, body, headers, and raw bytes.

Each fault is selected both ways a test can select it: the `x-aios-fault` header (any prompt) and a
script rule (`fault`, `fault_after_tokens`). The disconnect fault is checked on a raw socket, because
what matters there is exactly which bytes arrive before the connection closes.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx2
import pytest

from devserver import DevServerConfig
from devserver.responses import UNAVAILABLE_TEXT
from devserver.runner import running_in_thread
from devserver.scripts import FAULTS, Script

REPLY = "one two three four five six seven eight"
RULES: list[dict[str, Any]] = [
    {"name": "plain", "match": {"contains": "PLAIN"}, "response": REPLY},
    {"name": "unavailable", "match": {"contains": "RULE-UNAVAILABLE"}, "fault": "unavailable"},
    {
        "name": "server error",
        "match": {"contains": "RULE-SERVER-ERROR"},
        "fault": "server_error",
        "fault_after_tokens": 2,
        "response": REPLY,
    },
    {
        "name": "disconnect",
        "match": {"contains": "RULE-DISCONNECT"},
        "fault": "disconnect",
        "fault_after_tokens": 2,
        "response": REPLY,
    },
]

Body = Callable[[str], dict[str, Any]]
NON_STREAM: dict[str, tuple[str, Body]] = {
    "generate": ("/generate", lambda text: {"inputs": text}),
    "compat": ("/", lambda text: {"inputs": text}),
    "chat": ("/v1/chat/completions", lambda text: {"messages": [{"role": "user", "content": text}]}),
    "completions": ("/v1/completions", lambda text: {"prompt": text}),
}
STREAM: dict[str, tuple[str, Body]] = {
    "generate_stream": ("/generate_stream", lambda text: {"inputs": text}),
    "compat_stream": ("/", lambda text: {"inputs": text, "stream": True}),
    "chat_stream": (
        "/v1/chat/completions",
        lambda text: {"messages": [{"role": "user", "content": text}], "stream": True},
    ),
    "completions_stream": ("/v1/completions", lambda text: {"prompt": text, "stream": True}),
}
EMBED: dict[str, tuple[str, Body]] = {
    "embed": ("/embed", lambda text: {"inputs": text}),
    "openai_embeddings": ("/v1/embeddings", lambda text: {"input": text}),
}
# Routes where the prompt goes through script rules (TEI's have none).
SCRIPTED = {**NON_STREAM, **STREAM}
EVERY = {**SCRIPTED, **EMBED}


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    config = DevServerConfig(port=0, ttft_ms=2, tpot_ms=1, log_level="warning", stall_seconds=60)
    with running_in_thread(config, Script.from_data(RULES)) as base_url:
        yield base_url


def fault_headers(kind: str, after: int | None = None) -> dict[str, str]:
    headers = {"x-aios-fault": kind}
    if after is not None:
        headers["x-aios-fault-after-tokens"] = str(after)
    return headers


def raw_exchange(base_url: str, path: str, body: Any, headers: dict[str, str]) -> bytes:
    """Everything the server sends on one connection until it closes it (a bounded read)."""
    parts = urlsplit(base_url)
    payload = json.dumps(body).encode("utf-8")
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n{extra}\r\n"
    ).encode("ascii") + payload
    chunks = []
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(request)
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


def dechunk(body: bytes) -> tuple[bytes, bool]:
    """A chunked body's payload, and whether its terminating zero-length chunk arrived."""
    payload = b""
    while body:
        size_line, separator, rest = body.partition(b"\r\n")
        if not separator:
            break
        size = int(size_line, 16)
        if size == 0:
            return payload, True
        payload += rest[:size]
        body = rest[size + 2 :]
    return payload, False


def events(raw: bytes) -> list[Any]:
    """SSE `data:` payloads, JSON-decoded except the `[DONE]` sentinel; keep-alives dropped."""
    found: list[Any] = []
    for frame in raw.split(b"\n\n"):
        if frame.startswith(b"data:"):
            data = frame[len(b"data:") :]
            found.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return found


def metric(base_url: str, name: str) -> float:
    """A sample's value; a labelled counter not yet exported counts as 0."""
    text = httpx2.get(base_url + "/metrics").text
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match or "{" in name, name
    return float(match.group(1)) if match else 0.0


def test_fault_names_are_stable() -> None:
    # The client's tests iterate over these names; renaming one breaks them on purpose.
    assert FAULTS == ("overloaded", "generation", "timeout", "midstream", "unavailable", "server_error", "disconnect")
    for kind in FAULTS:
        assert Script.from_data([{"fault": kind, "fault_after_tokens": 1}]).rules[0].fault == kind


# --------------------------------------------------------------------------------------------------
# unavailable


@pytest.mark.parametrize("route", sorted(EVERY))
def test_unavailable_by_header_is_a_plain_503_on_every_route(url: str, route: str) -> None:
    path, body = EVERY[route]
    before = metric(url, "tgi_request_count")
    response = httpx2.post(url + path, json=body("PLAIN"), headers=fault_headers("unavailable"), timeout=10)
    assert response.status_code == 503
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text == UNAVAILABLE_TEXT
    assert "x-compute-type" not in response.headers, "the server behind the balancer never saw it"
    assert metric(url, "tgi_request_count") == before


@pytest.mark.parametrize("route", sorted(SCRIPTED))
def test_unavailable_by_rule(url: str, route: str) -> None:
    path, body = SCRIPTED[route]
    response = httpx2.post(url + path, json=body("RULE-UNAVAILABLE please"), timeout=10)
    assert (response.status_code, response.text) == (503, UNAVAILABLE_TEXT)
    assert response.headers["content-type"] == "text/plain; charset=utf-8"


def test_unavailable_comes_before_authentication(make_server: Any) -> None:
    with make_server(api_key="s3cret") as base_url:
        response = httpx2.post(base_url + "/generate", json={"inputs": "x"}, headers=fault_headers("unavailable"))
    assert response.status_code == 503


# --------------------------------------------------------------------------------------------------
# server_error


INCOMPLETE = {"error": "Incomplete generation", "error_type": "incomplete_generation"}
INCOMPLETE_STREAM = {"error": "Incomplete generation stream", "error_type": "incomplete_generation_stream"}


@pytest.mark.parametrize("how", ["header", "rule"])
@pytest.mark.parametrize("route", sorted(NON_STREAM))
def test_server_error_is_tgis_500_on_non_stream_routes(url: str, route: str, how: str) -> None:
    path, body = NON_STREAM[route]
    before = metric(url, 'tgi_request_failure{err="incomplete"}')
    if how == "header":
        response = httpx2.post(url + path, json=body("PLAIN"), headers=fault_headers("server_error"), timeout=10)
    else:
        response = httpx2.post(url + path, json=body("RULE-SERVER-ERROR"), timeout=10)
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    assert response.json() == INCOMPLETE
    assert metric(url, 'tgi_request_failure{err="incomplete"}') == before + 1


@pytest.mark.parametrize("how", ["header", "rule"])
@pytest.mark.parametrize("route", sorted(STREAM))
def test_server_error_ends_streams_in_band_after_some_tokens(url: str, route: str, how: str) -> None:
    path, body = STREAM[route]
    if how == "header":
        response = httpx2.post(url + path, json=body("PLAIN"), headers=fault_headers("server_error", 2), timeout=10)
    else:
        response = httpx2.post(url + path, json=body("RULE-SERVER-ERROR"), timeout=10)
    assert response.status_code == 200, "a stream's status is out before generation fails"
    assert response.headers["content-type"] == "text/event-stream"
    sent = events(response.content)
    if route == "chat_stream":
        tokens = [e["choices"][0]["delta"]["content"] for e in sent[:2]]
        assert sent[2:] == [
            {"error": {"message": "Incomplete generation stream", "http_status_code": 422}},
            "[DONE]",
        ]
    elif route == "completions_stream":
        tokens = [e["choices"][0]["text"] for e in sent[:2]]
        assert sent[2:] == [INCOMPLETE_STREAM, "[DONE]"]
    else:
        tokens = [e["token"]["text"] for e in sent[:2]]
        assert sent[2:] == [INCOMPLETE_STREAM], "no [DONE] on TGI's native stream"
    assert tokens == ["one", " two"]


# --------------------------------------------------------------------------------------------------
# disconnect


@pytest.mark.parametrize("how", ["header", "rule"])
@pytest.mark.parametrize("route", sorted(NON_STREAM))
def test_disconnect_closes_non_stream_requests_without_a_response(url: str, route: str, how: str) -> None:
    path, body = NON_STREAM[route]
    if how == "header":
        raw = raw_exchange(url, path, body("PLAIN"), fault_headers("disconnect"))
    else:
        raw = raw_exchange(url, path, body("RULE-DISCONNECT"), {})
    assert raw == b"", "not a byte: no status line, no headers"
    with pytest.raises(httpx2.RemoteProtocolError):
        httpx2.post(url + path, json=body("PLAIN"), headers=fault_headers("disconnect"), timeout=10)


@pytest.mark.parametrize("how", ["header", "rule"])
@pytest.mark.parametrize("route", sorted(STREAM))
def test_disconnect_cuts_streams_after_some_tokens(url: str, route: str, how: str) -> None:
    path, body = STREAM[route]
    if how == "header":
        raw = raw_exchange(url, path, body("PLAIN"), fault_headers("disconnect", 2))
    else:
        raw = raw_exchange(url, path, body("RULE-DISCONNECT"), {})
    head, _, chunked = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    payload, terminated = dechunk(chunked)
    assert not terminated, "the closing zero-length chunk never comes"
    sent = events(payload)
    assert len(sent) == 2, sent
    assert all(isinstance(e, dict) and "error" not in e for e in sent), "no error event"
    assert b"[DONE]" not in payload
    if route in ("generate_stream", "compat_stream"):
        assert all(e["generated_text"] is None for e in sent), "no final event"
    with (
        pytest.raises(httpx2.RemoteProtocolError),
        httpx2.stream("POST", url + path, json=body("PLAIN"), headers=fault_headers("disconnect", 1)) as response,
    ):
        assert response.status_code == 200
        response.read()


def test_disconnect_before_any_token(url: str) -> None:
    raw = raw_exchange(url, "/generate_stream", {"inputs": "PLAIN"}, fault_headers("disconnect", 0))
    head, _, chunked = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert dechunk(chunked) == (b"", False)


def test_server_is_whole_after_dropped_connections(url: str) -> None:
    for route in sorted(SCRIPTED):
        path, body = SCRIPTED[route]
        raw_exchange(url, path, body("RULE-DISCONNECT"), {})
    assert metric(url, "tgi_batch_current_size") == 0
    assert metric(url, "tgi_queue_size") == 0
    response = httpx2.post(url + "/generate", json={"inputs": "PLAIN"}, timeout=10)
    assert response.json() == {"generated_text": REPLY}


# --------------------------------------------------------------------------------------------------
# TEI


@pytest.mark.parametrize(
    ("kind", "status", "error_type"),
    [
        ("overloaded", 429, "Overloaded"),
        ("generation", 424, "Backend"),
        ("server_error", 500, "Backend"),
    ],
)
def test_embedding_faults_use_teis_error_shapes(url: str, kind: str, status: int, error_type: str) -> None:
    native = httpx2.post(url + "/embed", json={"inputs": "x"}, headers=fault_headers(kind), timeout=10)
    assert native.status_code == status
    assert native.headers["content-type"] == "application/json"
    assert set(native.json()) == {"error", "error_type"}
    assert native.json()["error_type"] == error_type
    openai = httpx2.post(url + "/v1/embeddings", json={"input": "x"}, headers=fault_headers(kind), timeout=10)
    assert openai.status_code == status
    assert openai.json() == {"message": native.json()["error"], "code": status, "type": error_type}


@pytest.mark.parametrize("route", sorted(EMBED))
def test_embedding_disconnect(url: str, route: str) -> None:
    path, body = EMBED[route]
    assert raw_exchange(url, path, body("x"), fault_headers("disconnect")) == b""
