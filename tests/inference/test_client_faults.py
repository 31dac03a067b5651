"""apps.inference.client under every fault the development server can inject: typed errors and retries.

The faults come from the real development server (its `x-aios-fault` header), reached through a small
loopback proxy that adds the header to the first requests only. That is how "the server failed once,
then recovered" is staged without touching the server: the client cannot change its headers between
attempts, and it should not have to. Everything else on the wire, a dropped connection included, passes
through the proxy untouched.

The fault modes are read from `devserver.scripts.FAULTS`, so a mode added to the server
is exercised here at once; it fails until `EXPECTED` says what the client should make of it.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest

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
from devserver import tokenizer
from devserver.scripts import FAULTS
from tests.inference.shapes import SHAPES, Shape
from tests.inference.shapes import call as call_shape

PROMPT = "Say hello"
REPLY = "Hello from the script."
PIECES = tokenizer.split(REPLY)
# Tokens a cut-short stream lets out before it fails (`x-aios-fault-after-tokens`).
AFTER = 2
TIMEOUT = 0.5


@dataclass(frozen=True)
class Expected:
    """What the client makes of one fault mode."""

    error: type[InferenceError]
    words: str  # a fragment of the message
    cuts_streams: bool  # on a stream, AFTER tokens reach on_token before the failure
    status: int | None  # the HTTP status kept on the error of a non-streamed call


EXPECTED: dict[str, Expected] = {
    "overloaded": Expected(InferenceOverloadedError, "is overloaded (too many requests at once)", False, 429),
    "generation": Expected(InferenceGenerationError, "failed while generating", False, 424),
    "timeout": Expected(InferenceTimeoutError, f"did not respond within {TIMEOUT:g} seconds", False, None),
    "midstream": Expected(InferenceGenerationError, "failed while generating", True, 424),
    "unavailable": Expected(InferenceUnavailableError, "is unavailable right now (HTTP 503)", False, 503),
    "server_error": Expected(InferenceGenerationError, "failed", True, 500),
    "disconnect": Expected(InferenceConnectionError, "closed the connection before the reply was complete", True, None),
}
# The server's modes first, then the ones this client already expects and the server does not offer yet.
MODES = [*FAULTS, *(mode for mode in EXPECTED if mode not in FAULTS)]


def expectation(mode: str) -> Expected:
    if mode not in FAULTS:
        pytest.fail(
            f"The development server does not offer the {mode!r} fault yet (devserver.scripts.FAULTS = {FAULTS}).",
            pytrace=False,
        )
    if mode not in EXPECTED:
        pytest.fail(f"The development server has a new fault {mode!r}: add what the client should raise to EXPECTED.")
    return EXPECTED[mode]


# --------------------------------------------------------------------------------------------------
# The fault-injecting proxy


class FaultProxy:
    """A loopback HTTP/1.1 proxy that adds `x-aios-fault: <fault>` to the first `times` requests it
    forwards (all of them when `times` is None) and passes every byte back as the server sent it, closing
    the client's connection when the server closes its own."""

    def __init__(self, upstream: str, fault: str | None, *, times: int | None, after_tokens: int) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.fault = fault
        self.times = times
        self.after_tokens = after_tokens
        self.requests = 0
        self.url = ""
        self.tasks: set[asyncio.Task[None]] = set()
        self.clients: set[asyncio.StreamWriter] = set()

    def _rewrite(self, head: bytes) -> bytes:
        self.requests += 1
        if self.fault is None or (self.times is not None and self.requests > self.times):
            return head
        extra = f"x-aios-fault: {self.fault}\r\nx-aios-fault-after-tokens: {self.after_tokens}\r\n"
        return head[:-2] + extra.encode("ascii") + b"\r\n"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.clients.add(writer)
        upstream_reader, upstream_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        back = asyncio.create_task(self._pipe(upstream_reader, writer))
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                lines = head.decode("latin-1").lower().split("\r\n")
                assert "transfer-encoding: chunked" not in lines, "the clients send sized bodies"
                length = next((int(line.split(":", 1)[1]) for line in lines if line.startswith("content-length:")), 0)
                body = await reader.readexactly(length)
                upstream_writer.write(self._rewrite(head) + body)
                await upstream_writer.drain()
        finally:
            # The client left (a timeout, a finished call): let the server see it, as it would directly.
            upstream_writer.close()
            await asyncio.gather(back, return_exceptions=True)
            self.clients.discard(writer)
            self.tasks.discard(task)

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, target: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                target.write(data)
                await target.drain()
        except ConnectionError:
            pass
        finally:
            target.close()


@contextmanager
def fault_proxy(
    upstream: str, fault: str | None, *, times: int | None = 1, after_tokens: int = AFTER
) -> Iterator[FaultProxy]:
    """Serve a FaultProxy in front of `upstream` on a thread of its own for the duration of the block."""
    proxy = FaultProxy(upstream, fault, times=times, after_tokens=after_tokens)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fault-proxy", daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(asyncio.start_server(proxy.handle, "127.0.0.1", 0), loop).result(5)
    proxy.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield proxy
    finally:

        async def stop() -> None:
            server.close()
            # Closing the connections ends their handlers (a cancelled handler task is logged as an error
            # by asyncio's stream server); pooled keep-alive connections are still open at this point.
            for writer in list(proxy.clients):
                writer.close()
            if proxy.tasks:
                await asyncio.wait(list(proxy.tasks), timeout=5)
            await server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


# --------------------------------------------------------------------------------------------------
# Calling every shape


def call(shape: Shape, base_url: str, *, received: list[str] | None = None, **options: Any) -> client.InferenceResult:
    """One call of `shape` asking for REPLY."""
    options.setdefault("max_tokens", 50)
    result: client.InferenceResult = call_shape(shape, base_url, PROMPT, received=received, **options)
    return result


def timeout_for(mode: str) -> float:
    # Short only where the fault is a stall; elsewhere a slow test machine must not turn into a timeout.
    return TIMEOUT if mode == "timeout" else 30.0


# --------------------------------------------------------------------------------------------------
# Typed errors: every fault, every shape


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", SHAPES)
def test_fault_is_typed(base_url: str, shape: Shape, mode: str) -> None:
    expected = expectation(mode)
    streamed = shape[1]
    received: list[str] = []
    with fault_proxy(base_url, mode, times=None) as proxy, pytest.raises(InferenceError) as caught:
        call(shape, proxy.url, received=received, timeout=timeout_for(mode))
    error = caught.value
    print(f"{mode} on {shape}: {type(error).__name__}: {error}")
    assert type(error) is expected.error, f"{type(error).__name__}: {error}"
    assert expected.words in error.message
    assert proxy.url in error.message and error.base_url == proxy.url
    assert error.retryable is True
    assert error.attempts == 1 and proxy.requests == 1
    delivered = AFTER if streamed and expected.cuts_streams else 0
    assert received == PIECES[:delivered]
    assert error.tokens_delivered == delivered
    assert (f"The reply broke off after {AFTER} tokens." in error.message) == bool(delivered)
    if not streamed:
        assert error.status_code == expected.status


@pytest.mark.parametrize("shape", SHAPES)
def test_validation_error_keeps_the_servers_words(base_url: str, shape: Shape) -> None:
    with fault_proxy(base_url, None) as proxy, pytest.raises(InferenceValidationError) as caught:
        call(shape, proxy.url, max_tokens=9000, retries=2)
    error = caught.value
    words = "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 8192. Given: "
    assert error.server_message is not None and error.server_message.startswith(words)
    assert "9000 `max_new_tokens`" in error.server_message
    assert error.server_message in error.message
    assert error.message.startswith(f"The inference server at {proxy.url} rejected the request")
    assert error.retryable is False
    assert proxy.requests == 1 and error.attempts == 1, "a refused request is never retried"


# --------------------------------------------------------------------------------------------------
# Retries


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", SHAPES)
def test_a_fault_on_the_first_attempt_only(base_url: str, shape: Shape, mode: str) -> None:
    expected = expectation(mode)
    streamed = shape[1]
    received: list[str] = []
    with fault_proxy(base_url, mode, times=1) as proxy:
        if streamed and expected.cuts_streams:
            # Tokens already reached the reader: starting over would show them twice.
            with pytest.raises(expected.error) as caught:
                call(shape, proxy.url, received=received, retries=2, backoff=0.01, timeout=timeout_for(mode))
            assert caught.value.attempts == 1 and proxy.requests == 1
            assert received == PIECES[:AFTER]
            return
        started = time.perf_counter()
        result = call(shape, proxy.url, received=received, retries=2, backoff=0.01, timeout=timeout_for(mode))
        print(f"{mode} on {shape}: recovered on attempt {result.attempts} in {time.perf_counter() - started:.3f} s")
    assert result.text == REPLY
    assert result.attempts == 2 and proxy.requests == 2
    assert received == (PIECES if streamed else []), "the failed attempt delivered nothing"
    assert result.latency_ms >= (result.ttft_ms or 0)


@pytest.mark.parametrize("shape", [s for s in SHAPES if s.values[0][1]])  # type: ignore[index]
def test_a_stream_cut_before_its_first_token_is_retried(base_url: str, shape: Shape) -> None:
    received: list[str] = []
    with fault_proxy(base_url, "midstream", times=1, after_tokens=0) as proxy:
        result = call(shape, proxy.url, received=received, retries=1, backoff=0.01)
    assert (result.text, result.attempts, proxy.requests) == (REPLY, 2, 2)
    assert received == PIECES


@pytest.mark.parametrize("shape", SHAPES)
def test_no_retries_by_default(base_url: str, shape: Shape) -> None:
    with fault_proxy(base_url, "overloaded", times=1) as proxy, pytest.raises(InferenceOverloadedError) as caught:
        call(shape, proxy.url)
    assert proxy.requests == 1 and caught.value.attempts == 1
    assert "Gave up" not in caught.value.message


@pytest.mark.parametrize("shape", SHAPES)
def test_giving_up_says_how_often_it_tried(base_url: str, shape: Shape, caplog: pytest.LogCaptureFixture) -> None:
    with (
        caplog.at_level("WARNING", logger="apps.inference.client"),
        fault_proxy(base_url, "overloaded", times=None) as proxy,
        pytest.raises(InferenceOverloadedError) as caught,
    ):
        call(shape, proxy.url, retries=2, backoff=0.01)
    error = caught.value
    assert proxy.requests == 3 and error.attempts == 3
    assert error.message == (
        f"The inference server at {proxy.url} is overloaded (too many requests at once); try again shortly. "
        "Gave up after 3 attempts."
    )
    retries = [r.getMessage() for r in caplog.records if r.name.startswith("apps.inference.client")]
    assert len(retries) == 2 and "retry 1 of 2" in retries[0] and "retry 2 of 2" in retries[1]


def test_credentials_are_never_retried(make_server: Any) -> None:
    with make_server(api_key="k3y") as url, fault_proxy(url, None) as proxy:
        for shape in (("generate", True), ("chat", False)):
            with pytest.raises(InferenceAuthenticationError) as caught:
                call(shape, proxy.url, token="wrong", retries=3, backoff=0.01)
            assert caught.value.attempts == 1
        assert proxy.requests == 2


def test_a_callback_error_is_not_retried(base_url: str) -> None:
    class Stop(Exception):
        pass

    def explode(text: str) -> None:
        raise Stop(text)

    async def explode_later(text: str) -> None:
        raise Stop(text)

    with fault_proxy(base_url, None) as proxy:
        for shape, on_token in ((("generate", True), explode), (("chat", True), explode_later)):
            with pytest.raises(Stop):
                call(shape, proxy.url, on_token=on_token, retries=3, backoff=0.01)
        assert proxy.requests == 2


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize("shape", SHAPES)
def test_connection_refused_is_retried_with_backoff(shape: Shape) -> None:
    url = f"http://127.0.0.1:{unused_port()}"
    started = time.perf_counter()
    with pytest.raises(InferenceConnectionError) as caught:
        call(shape, url, retries=2, backoff=0.2)
    elapsed = time.perf_counter() - started
    print(f"connection refused on {shape}: gave up after {elapsed:.3f} s")
    assert caught.value.attempts == 3
    assert str(caught.value) == (
        f"The inference server at {url} is not reachable (connection refused). Gave up after 3 attempts."
    )
    # Each wait is at least half its ceiling: 0.1 s before the first retry, 0.2 s before the second.
    assert elapsed >= 0.3


def test_async_backoff_leaves_the_loop_free(base_url: str) -> None:
    async def scenario() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def timed(coroutine: Any) -> float:
            await coroutine
            return loop.time() - started

        with fault_proxy(base_url, "overloaded", times=1) as proxy:
            retrying, plain = await asyncio.gather(
                timed(
                    client.achat(
                        client.Endpoint(proxy.url),
                        client.ChatRequest(messages=[{"role": "user", "content": PROMPT}], max_tokens=20),
                        retries=1,
                        backoff=1.0,
                    )
                ),
                timed(client.agenerate(client.Endpoint(base_url), client.GenerateRequest(PROMPT, max_new_tokens=20))),
            )
        return retrying, plain

    retrying, plain = asyncio.run(scenario())
    print(f"retrying call took {retrying:.3f} s, the other {plain:.3f} s")
    assert retrying >= 0.5, "the first retry waits at least half of `backoff`"
    assert plain < 0.4, "the other call ran while the first one waited"


def test_backoff_delay_doubles_with_jitter_and_a_cap() -> None:
    for retry in range(1, 12):
        ceiling = min(client.MAX_BACKOFF_SECONDS, 0.5 * 2 ** (retry - 1))
        delays = [client.backoff_delay(retry, 0.5) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (retry, min(delays), max(delays))
        assert len(set(delays)) > 1, "jittered"
    assert client.backoff_delay(1, 0.0) == 0.0


@pytest.mark.parametrize("shape", SHAPES)
def test_bad_retry_arguments_are_refused(base_url: str, shape: Shape) -> None:
    with fault_proxy(base_url, None) as proxy:
        with pytest.raises(ValueError, match="retries must be 0 or more"):
            call(shape, proxy.url, retries=-1)
        with pytest.raises(ValueError, match="backoff must be 0 seconds or more"):
            call(shape, proxy.url, backoff=-0.1)
        assert proxy.requests == 0, "refused before any request"
