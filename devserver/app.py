"""The development inference server as a Starlette application.

One process serves three protocol families on one port:

- TGI's native routes (`/`, `/generate`, `/generate_stream`, `/tokenize`, `/info`, `/health`, `/metrics`);
- the OpenAI-compatible routes TGI exposes (`/v1/chat/completions`, `/v1/completions`, `/v1/models`);
- TEI's `/embed` (and its OpenAI-style `/v1/embeddings`).

TEI's own `POST /` (which dispatches to `/embed` on an embedding model) is deliberately absent: `/` is
TGI's compat route here, and the inference client points `feature_extraction` at `/embed` directly.

Behaviour follows TGI's router byte for byte where clients can observe it: status
codes, error bodies, rejection texts, SSE framing, headers present and absent, field order. Nothing here
imports Django: the server runs as its own process next to the product.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from . import embeddings, engine, protocol, tokenizer
from .batching import BatchScheduler, Sequence
from .config import DEVSERVER_LABEL, DevServerConfig
from .engine import GenerateParameters, InferError, Plan, ValidRequest
from .metrics import Metrics
from .scripts import FAULTS, Script, choose_reply

logger = logging.getLogger("aios.devserver")

FAULT_HEADER = "x-aios-fault"
FAULT_AFTER_HEADER = "x-aios-fault-after-tokens"
_DISCONNECT_POLL_SECONDS = 0.05
# How long a handler that dropped its connection waits for the server to notice before giving up.
_DROP_WAIT_SECONDS = 2.0
# Where `_DevServerApp` leaves the connection's transport for the disconnect fault.
_TRANSPORT_KEY = "aios.transport"
# Faults that let some tokens out first (`fault_after_tokens`), then fail in their own way.
_CUT_FAULTS = ("midstream", "server_error", "disconnect")
UNAVAILABLE_TEXT = "Service Unavailable: no healthy upstream (injected fault, AIOS development server)"


class _ClientGone(Exception):
    """The client hung up while we were pacing a non-stream reply."""


class _DropConnection(Exception):
    """The disconnect fault fired: the connection must close without another byte."""


# --------------------------------------------------------------------------------------------------
# State


class DevServerState:
    """Per-application state: config, script, metrics and the concurrency limit."""

    def __init__(self, config: DevServerConfig, script: Script) -> None:
        self.config = config
        self.script = script
        self.metrics = Metrics()
        self.in_flight = 0
        self.system_fingerprint = f"{config.version}-{DEVSERVER_LABEL}"
        self.scheduler = BatchScheduler(config)
        self.embedder = embeddings.choose_backend(config.embedding_backend, config.embedding_dimensions)

    @property
    def embedding_model_id(self) -> str:
        """The configured id, unless it is the default and a real model answers (then that model's id)."""
        configured = self.config.embedding_model_id
        if self.embedder.model_id and configured == DevServerConfig.embedding_model_id:
            return self.embedder.model_id
        return configured

    def try_acquire(self) -> _Permit | None:
        """TGI's `try_acquire_owned` on its request semaphore: no waiting, None when full.

        Check and increment happen with no await in between, so the event loop makes them atomic.
        """
        if self.in_flight >= self.config.max_concurrent_requests:
            return None
        self.in_flight += 1
        return _Permit(self)

    def info(self) -> dict[str, Any]:
        config = self.config
        return {
            "model_id": config.model_id,
            "model_sha": None,
            # TGI derives `/`'s return_full_text default from the pipeline tag; keep the two consistent.
            "model_pipeline_tag": "text-generation" if config.return_full_text_default else "text2text-generation",
            "max_concurrent_requests": config.max_concurrent_requests,
            "max_best_of": config.max_best_of,
            "max_stop_sequences": config.max_stop_sequences,
            "max_input_tokens": config.max_input_tokens,
            "max_total_tokens": config.max_total_tokens,
            "validation_workers": config.validation_workers,
            "max_client_batch_size": config.max_client_batch_size,
            "router": "text-generation-router",
            "version": config.version,
            "sha": None,
            "docker_label": DEVSERVER_LABEL,
        }


class _Permit:
    """One admitted request (TGI's semaphore permit); batch slots are the scheduler's business."""

    def __init__(self, state: DevServerState) -> None:
        self.state = state
        self.released = False

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        state = self.state
        state.in_flight -= 1


def _state(request: Request) -> DevServerState:
    state: DevServerState = request.app.state.devserver
    return state


# --------------------------------------------------------------------------------------------------
# Responses


def _json(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(protocol.dumps(value), status_code=status, headers=headers, media_type=protocol.JSON_CONTENT_TYPE)


def _plain(status: int, text: str) -> Response:
    return Response(text.encode("utf-8"), status_code=status, headers={"content-type": protocol.PLAIN_CONTENT_TYPE})


def _empty(status: int) -> Response:
    return Response(b"", status_code=status)


def _error(err: InferError) -> Response:
    return _json(err.body(), status=err.status)


def _unavailable() -> Response:
    """The unavailable fault: what a load balancer in front of the server answers when it is down."""
    return _plain(503, UNAVAILABLE_TEXT)


async def _drop_connection(request: Request) -> Response:
    """Close the client's connection without a response (the disconnect fault on a non-stream request).

    Returns a response for Starlette to send into the void: once the server has seen the connection go,
    it drops whatever the application sends.
    """
    _close_transport(request)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _DROP_WAIT_SECONDS
    while not await request.is_disconnected() and loop.time() < deadline:
        await asyncio.sleep(0.01)
    return _empty(500)


def _close_transport(request: Request) -> None:
    transport = request.scope.get(_TRANSPORT_KEY)
    if transport is None:
        # Not under uvicorn: an exception is the nearest thing (the server answers 500 or resets).
        raise RuntimeError("the disconnect fault needs the connection's transport (run under uvicorn)")
    transport.close()


async def _dropped_stream(request: Request) -> AsyncIterator[bytes]:
    """End a stream by closing its connection mid-body: no error event, no final event, no last chunk."""
    _close_transport(request)
    # Starlette cancels the stream as soon as the server reports the disconnect; the sleep only bounds
    # the wait if it never does. Nothing may be yielded after the close.
    await asyncio.sleep(_DROP_WAIT_SECONDS)
    return
    yield b""  # an async generator, for the callers' `async for`


def _stream_headers(config: DevServerConfig, characters: int) -> dict[str, str]:
    # Written before generation starts, which is why TGI sends no timing or token headers on streams.
    return {
        "content-type": protocol.SSE_CONTENT_TYPE,
        "cache-control": "no-cache",
        "x-compute-type": config.compute_type,
        "x-compute-characters": str(characters),
        "x-accel-buffering": "no",
    }


@dataclass
class _Timings:
    start: float
    queued: float
    inference_start: float
    end: float = 0.0

    def admitted(self) -> None:
        """The request got its batch slot: queue time ends, inference time begins."""
        self.inference_start = time.perf_counter()

    def headers(
        self, config: DevServerConfig, characters: int, plan: Plan, *, compute_time: bool = True
    ) -> dict[str, str]:
        total = self.end - self.start
        inference = self.end - self.inference_start
        per_token = inference / max(plan.generated_tokens, 1)
        headers = {"x-compute-type": config.compute_type}
        if compute_time:
            headers["x-compute-time"] = repr(total)
        headers.update(
            {
                "x-compute-characters": str(characters),
                "x-total-time": str(int(total * 1000)),
                "x-validation-time": str(int((self.queued - self.start) * 1000)),
                "x-queue-time": str(int((self.inference_start - self.queued) * 1000)),
                "x-inference-time": str(int(inference * 1000)),
                "x-time-per-token": str(int(per_token * 1000)),
                "x-prompt-tokens": str(plan.input_length),
                "x-generated-tokens": str(plan.generated_tokens),
            }
        )
        return headers


# --------------------------------------------------------------------------------------------------
# Request body extraction (auth, content type, size, JSON, shape), in axum's order


async def _read_body(request: Request, shape: protocol.Type) -> dict[str, Any]:
    state = _state(request)
    api_key = state.config.api_key
    if api_key:
        supplied = request.headers.get("authorization")
        if supplied is None or supplied.lower() != f"bearer {api_key}".lower():
            raise protocol.Rejection(401, "")
    protocol.check_content_type(request.headers.get("content-type"))
    limit = state.config.payload_limit
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise protocol.Rejection(413, "Failed to buffer the request body: length limit exceeded")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise protocol.Rejection(413, "Failed to buffer the request body: length limit exceeded")
        chunks.append(chunk)
    value, text = protocol.parse_json(b"".join(chunks))
    decoded: dict[str, Any] = protocol.decode(shape, value, text)
    return decoded


def _post(
    shape: protocol.Type, handler: Callable[[Request, dict[str, Any]], Awaitable[Response]]
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        if _header_fault(request) == "unavailable":
            # Answered in front of the server: no authentication, no body, no metrics.
            return _unavailable()
        try:
            body = await _read_body(request, shape)
        except protocol.Rejection as rejection:
            if rejection.status == 401:
                return _empty(401)
            return _plain(rejection.status, rejection.text)
        return await handler(request, body)

    return endpoint


# --------------------------------------------------------------------------------------------------
# Faults


@dataclass(frozen=True)
class _Fault:
    kind: str | None
    after_tokens: int


def _fault(request: Request, rule_fault: str | None, rule_after: int | None) -> _Fault:
    """The per-request header wins over the script rule, so a test can fault any prompt."""
    config = _state(request).config
    header = request.headers.get(FAULT_HEADER, "").strip().lower() or None
    kind = header if header in FAULTS else rule_fault
    after = rule_after if rule_after is not None else config.fault_after_tokens
    header_after = request.headers.get(FAULT_AFTER_HEADER, "").strip()
    if header_after.isdigit():
        after = int(header_after)
    return _Fault(kind, after)


def _header_fault(request: Request) -> str | None:
    header = request.headers.get(FAULT_HEADER, "").strip().lower()
    return header if header in FAULTS else None


def _early_fault(request: Request, route: str, match_texts: list[str]) -> str | None:
    """The fault known before the response starts: the header's, else the first matching rule's.

    Needed where the fault decides the status line (unavailable) before a stream opens.
    """
    header = _header_fault(request)
    if header is not None:
        return header
    script = _state(request).script
    for text in match_texts:
        rule = script.find(text, route)
        if rule is not None and rule.fault is not None:
            return rule.fault
    return None


def _injected_generation_error() -> InferError:
    return InferError.generation("injected fault (AIOS development server): the model backend failed")


def _cut_fault_error(kind: str | None, *, streaming: bool) -> Exception:
    """What ends a generation cut short by `kind` (one of `_CUT_FAULTS`)."""
    if kind == "disconnect":
        return _DropConnection()
    if kind == "server_error":
        # TGI's 500s: a non-stream request gets IncompleteGeneration; a stream, already 200, gets the
        # in-band IncompleteGenerationStream event that TGI sends when the backend stream ends early.
        if streaming:
            return InferError("incomplete_generation_stream", "Incomplete generation stream")
        return InferError("incomplete_generation", "Incomplete generation")
    return _injected_generation_error()


# --------------------------------------------------------------------------------------------------
# Jobs: one validated, planned generation holding a concurrency permit


@dataclass
class _Job:
    valid: ValidRequest
    plan: Plan
    fault: _Fault
    timings: _Timings
    full_text_prefix: str
    reply_source: str

    @property
    def reserved_tokens(self) -> int:
        """The token budget the batch gauges count for this request, as TGI's do."""
        return self.valid.input_length + self.valid.max_new_tokens

    def tokens_before_fault(self) -> int:
        """How many tokens go out: all of them, or as many as a cutting fault allows."""
        if self.fault.kind in _CUT_FAULTS:
            return min(self.fault.after_tokens, self.plan.generated_tokens)
        return self.plan.generated_tokens


def _prepare(
    request: Request,
    *,
    inputs: str,
    params: GenerateParameters,
    route: str,
    match_text: str,
    tail_source: str,
    streaming: bool,
    start: float,
) -> _Job:
    """Validate and plan one generation (the caller holds a permit). Raises InferError."""
    state = _state(request)
    valid = engine.validate(inputs, params, state.config, streaming=streaming)
    queued = time.perf_counter()
    reply = choose_reply(
        state.script, route=route, match_text=match_text, tail_source=tail_source, constraint=valid.constraint
    )
    if reply.rule:
        logger.debug("scripted reply from %s (%s)", reply.rule, reply.source)
    plan = engine.build_plan(reply.text, valid)
    prefix = inputs if params.return_full_text else ""
    fault = _fault(request, reply.fault, reply.fault_after_tokens)
    state.metrics.observe("tgi_request_input_length", valid.input_length)
    state.metrics.observe("tgi_request_max_new_tokens", valid.max_new_tokens)
    return _Job(valid, plan, fault, _Timings(start, queued, queued), prefix, reply.source)


class _Pacer:
    """Sleeps on the event loop (so many streams run at once) and yields SSE keep-alives when due."""

    def __init__(self, config: DevServerConfig) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.last_event = self.loop.time()

    def sent(self) -> None:
        self.last_event = self.loop.time()

    async def until(self, deadline: float, *, keep_alive: bool = True) -> AsyncIterator[bytes]:
        interval = self.config.keep_alive_seconds
        while True:
            now = self.loop.time()
            if now >= deadline:
                return
            due = self.last_event + interval
            if keep_alive and interval > 0 and due < deadline:
                await asyncio.sleep(max(0.0, due - now))
                self.sent()
                yield protocol.SSE_KEEP_ALIVE
            else:
                await asyncio.sleep(deadline - now)


async def _token_events(
    job: _Job, pacer: _Pacer, scheduler: BatchScheduler
) -> AsyncIterator[tuple[int, engine.GenToken] | bytes]:
    """The plan's tokens as the batch produces them (and keep-alives between them).

    Raises InferError for faults, `_DropConnection` for the disconnect fault.
    """
    config = pacer.config
    kind = job.fault.kind
    if kind == "timeout":
        # No keep-alives during the stall: it models a hung server whose connection stays silent, so the
        # client's read timeout (not a keep-alive) ends the wait.
        async for _ in pacer.until(pacer.loop.time() + config.stall_seconds, keep_alive=False):
            pass
    if kind == "overloaded":
        raise InferError.overloaded()
    if kind == "generation":
        raise _injected_generation_error()
    tokens = job.plan.tokens
    count = job.tokens_before_fault()
    if count > 0:
        sequence = scheduler.submit(count, reserved_tokens=job.reserved_tokens, on_admit=job.timings.admitted)
        try:
            consumed = 0
            while consumed < count and not sequence.cancelled:
                if sequence.emitted > consumed:
                    consumed += 1
                    yield consumed, tokens[consumed - 1]
                    continue
                sequence.changed.clear()
                if sequence.emitted > consumed:
                    continue
                keep_alive = await _wait_or_keep_alive(sequence, pacer)
                if keep_alive:
                    yield protocol.SSE_KEEP_ALIVE
        finally:
            # A no-op after the last token; frees the slot when the client left mid-stream.
            scheduler.cancel(sequence)
    if kind in _CUT_FAULTS:
        raise _cut_fault_error(kind, streaming=True)


async def _wait_or_keep_alive(sequence: Sequence, pacer: _Pacer) -> bool:
    """Wait for the sequence to move; True when a keep-alive comment is due first (it is then counted)."""
    interval = pacer.config.keep_alive_seconds
    if interval <= 0:
        await sequence.changed.wait()
        return False
    remaining = pacer.last_event + interval - pacer.loop.time()
    if remaining > 0:
        try:
            await asyncio.wait_for(sequence.changed.wait(), timeout=remaining)
            return False
        except TimeoutError:
            pass
    pacer.sent()
    return True


async def _sleep_watching(request: Request, seconds: float) -> None:
    """Sleep, but stop early (raising _ClientGone) if the client disconnects, freeing the permit."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return
        await asyncio.sleep(min(remaining, _DISCONNECT_POLL_SECONDS))
        if remaining > _DISCONNECT_POLL_SECONDS and await request.is_disconnected():
            raise _ClientGone


async def _generate_watching(request: Request, job: _Job, tokens: int) -> None:
    """Run `tokens` tokens (0: prefill only) through the batch; raise _ClientGone if the client leaves."""
    scheduler = _state(request).scheduler
    sequence = scheduler.submit(tokens, reserved_tokens=job.reserved_tokens, on_admit=job.timings.admitted)
    try:
        while not sequence.finished:
            await asyncio.wait({sequence.done}, timeout=_DISCONNECT_POLL_SECONDS)
            if not sequence.finished and await request.is_disconnected():
                raise _ClientGone
    finally:
        scheduler.cancel(sequence)


async def _run_to_completion(request: Request, job: _Job) -> None:
    """Generate a non-stream reply: the client sees nothing until the whole reply is ready.

    Raises InferError for faults, `_DropConnection` for the disconnect fault, `_ClientGone` when the
    client leaves first.
    """
    config = _state(request).config
    kind = job.fault.kind
    if kind == "timeout":
        await _sleep_watching(request, config.stall_seconds)
    if kind == "overloaded":
        raise InferError.overloaded()
    if kind == "generation":
        # The backend fails during prefill: the time to first token passes, then the error.
        await _generate_watching(request, job, 0)
        raise _injected_generation_error()
    await _generate_watching(request, job, job.tokens_before_fault())
    if kind in _CUT_FAULTS:
        raise _cut_fault_error(kind, streaming=False)
    job.timings.end = time.perf_counter()


def _record_success(state: DevServerState, job: _Job) -> None:
    timings = job.timings
    end = timings.end or time.perf_counter()
    inference = end - timings.inference_start
    metrics = state.metrics
    metrics.count("tgi_request_success")
    metrics.observe("tgi_request_duration", end - timings.start)
    metrics.observe("tgi_request_validation_duration", timings.queued - timings.start)
    metrics.observe("tgi_request_queue_duration", timings.inference_start - timings.queued)
    metrics.observe("tgi_request_inference_duration", inference)
    metrics.observe("tgi_request_mean_time_per_token_duration", inference / max(job.plan.generated_tokens, 1))
    metrics.observe("tgi_request_generated_tokens", job.plan.generated_tokens)


async def _generate_once(
    request: Request,
    *,
    inputs: str,
    params: GenerateParameters,
    route: str,
    match_text: str,
    tail_source: str,
    start: float,
) -> _Job:
    """A whole non-stream generation under a permit; raises InferError or _ClientGone."""
    state = _state(request)
    permit = None if _header_fault(request) == "overloaded" else state.try_acquire()
    if permit is None:
        state.metrics.fail("overloaded")
        raise InferError.overloaded()
    try:
        try:
            job = _prepare(
                request,
                inputs=inputs,
                params=params,
                route=route,
                match_text=match_text,
                tail_source=tail_source,
                streaming=False,
                start=start,
            )
            await _run_to_completion(request, job)
        except InferError as err:
            state.metrics.fail(err.metric_label)
            raise
        _record_success(state, job)
        return job
    finally:
        permit.release()


# --------------------------------------------------------------------------------------------------
# TGI native routes


def _generate_response_body(job: _Job) -> dict[str, Any]:
    params = job.valid.params
    body: dict[str, Any] = {"generated_text": job.full_text_prefix + job.plan.generated_text}
    if params.details or params.decoder_input_details:
        body["details"] = engine.details(job.plan, params.best_of or 1, job.full_text_prefix)
    return body


async def _generate(request: Request, inputs: str, params: GenerateParameters, *, wrap_in_list: bool) -> Response:
    state = _state(request)
    if _early_fault(request, "generate", [inputs]) == "unavailable":
        return _unavailable()
    start = time.perf_counter()
    state.metrics.count("tgi_request_count")
    try:
        job = await _generate_once(
            request, inputs=inputs, params=params, route="generate", match_text=inputs, tail_source=inputs, start=start
        )
    except InferError as err:
        return _error(err)
    except _ClientGone:
        return _empty(499)
    except _DropConnection:
        return await _drop_connection(request)
    body = _generate_response_body(job)
    headers = job.timings.headers(state.config, len(inputs), job.plan)
    # The compat route wraps the response in a list "to match api-inference" (TGI's comment).
    return _json([body] if wrap_in_list else body, headers=headers)


def _generate_stream(request: Request, inputs: str, params: GenerateParameters) -> Response:
    state = _state(request)
    if _early_fault(request, "generate", [inputs]) == "unavailable":
        return _unavailable()
    start = time.perf_counter()
    state.metrics.count("tgi_request_count")
    header_fault = _header_fault(request)

    async def body() -> AsyncIterator[bytes]:
        # Everything below happens after the 200 and the headers are out: TGI reports validation
        # errors, overload and generation failures in-band, as one error event.
        permit = None if header_fault == "overloaded" else state.try_acquire()
        if permit is None:
            state.metrics.fail("overloaded")
            yield protocol.sse_event(InferError.overloaded().body())
            return
        pacer = _Pacer(state.config)
        try:
            job = _prepare(
                request,
                inputs=inputs,
                params=params,
                route="generate",
                match_text=inputs,
                tail_source=inputs,
                streaming=True,
                start=start,
            )
            top_tokens = job.plan.top_tokens
            last = job.plan.generated_tokens
            async for item in _token_events(job, pacer, state.scheduler):
                if isinstance(item, bytes):
                    yield item
                    continue
                index, token = item
                event: dict[str, Any] = {"index": index, "token": token.wire()}
                if top_tokens is not None:
                    event["top_tokens"] = [t.wire() for t in top_tokens[index - 1]]
                if index == last:
                    job.timings.end = time.perf_counter()
                    event["generated_text"] = job.full_text_prefix + job.plan.generated_text
                    event["details"] = engine.stream_details(job.plan) if params.details else None
                else:
                    event["generated_text"] = None
                    event["details"] = None
                pacer.sent()
                yield protocol.sse_event(event)
            _record_success(state, job)
        except InferError as err:
            state.metrics.fail(err.metric_label)
            yield protocol.sse_event(err.body())
        except _DropConnection:
            async for nothing in _dropped_stream(request):
                yield nothing
        finally:
            permit.release()

    return StreamingResponse(body(), headers=_stream_headers(state.config, len(inputs)))


async def compat_generate(request: Request, body: dict[str, Any]) -> Response:
    """`POST /`: TGI's compat route; a list response, or SSE when `stream` is true."""
    params = GenerateParameters.from_request(body.get("parameters"))
    if params.return_full_text is None:
        params.return_full_text = _state(request).config.return_full_text_default
    if body.get("stream"):
        return _generate_stream(request, body["inputs"], params)
    return await _generate(request, body["inputs"], params, wrap_in_list=True)


async def generate(request: Request, body: dict[str, Any]) -> Response:
    """`POST /generate`."""
    return await _generate(
        request, body["inputs"], GenerateParameters.from_request(body.get("parameters")), wrap_in_list=False
    )


async def generate_stream(request: Request, body: dict[str, Any]) -> Response:
    """`POST /generate_stream`: SSE, no `[DONE]` sentinel."""
    return _generate_stream(request, body["inputs"], GenerateParameters.from_request(body.get("parameters")))


async def tokenize(request: Request, body: dict[str, Any]) -> Response:
    """`POST /tokenize`."""
    pieces = tokenizer.tokenize(body["inputs"])
    return _json([{"id": p.id, "text": p.text, "start": p.start, "stop": p.stop} for p in pieces])


async def info(request: Request) -> Response:
    """`GET /info`."""
    return _json(_state(request).info())


async def health(request: Request) -> Response:
    """`GET /health` (also `GET /` and `GET /ping`): 200 with an empty body."""
    return _empty(200)


async def root(request: Request) -> Response:
    if request.method == "POST":
        return await _post(protocol.COMPAT_GENERATE_REQUEST, compat_generate)(request)
    return _empty(200)


async def metrics(request: Request) -> Response:
    """`GET /metrics`: Prometheus text."""
    state = _state(request)
    scheduler = state.scheduler
    return _plain(
        200,
        state.metrics.render(
            queue_size=scheduler.queue_size, batch_size=scheduler.batch_size, batch_tokens=scheduler.batch_tokens
        ),
    )


async def models(request: Request) -> Response:
    """`GET /v1/models`: a list wrapper (the TGI spec wrongly documents a bare ModelInfo)."""
    model_id = _state(request).config.model_id
    return _json({"object": "list", "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": model_id}]})


# --------------------------------------------------------------------------------------------------
# OpenAI-compatible chat completions


def _message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
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
    if message.get("tool_calls"):
        return json.dumps(message["tool_calls"], ensure_ascii=False)
    return ""


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
    tool: dict[str, Any] | None


def _chat_setup(state: DevServerState, body: dict[str, Any]) -> _ChatSetup:
    """Map a ChatRequest onto a generate request the way TGI's `try_into_generate` does."""
    messages = body["messages"]
    for message in messages:
        if "content" not in message and "tool_calls" not in message:
            raise InferError("template_error", "Template error: message has neither `content` nor `tool_calls`")
    tools = body.get("tools")
    tool_choice = body.get("tool_choice")
    response_format = body.get("response_format")
    if tools is not None and response_format is not None:
        raise InferError.tool("Grammar and tools are mutually exclusive")
    tool = None
    grammar = response_format
    if tools and tool_choice != "none":
        wanted = None
        if isinstance(tool_choice, dict):
            wanted = (tool_choice.get("function") or {}).get("name")
        elif isinstance(tool_choice, str) and tool_choice not in ("auto", "required"):
            wanted = tool_choice
        candidates = [t for t in tools if wanted is None or t["function"]["name"] == wanted]
        if not candidates:
            raise InferError.tool(f"Tool choice '{wanted}' not found in tool names")
        tool = candidates[0]
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
        match_text="\n".join(_message_text(m) for m in messages),
        tail_source=_message_text(user_messages[-1] if user_messages else (messages[-1] if messages else {})),
        model=str(model) if model not in (None, "tgi") else state.config.model_id,
        tool=tool,
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


def _usage(plan: Plan) -> dict[str, int]:
    return {
        "prompt_tokens": plan.input_length,
        "completion_tokens": plan.generated_tokens,
        "total_tokens": plan.input_length + plan.generated_tokens,
    }


async def chat_completions(request: Request, body: dict[str, Any]) -> Response:
    """`POST /v1/chat/completions`, streamed or not."""
    state = _state(request)
    start = time.perf_counter()
    state.metrics.count("tgi_request_count")
    try:
        setup = _chat_setup(state, body)
    except InferError as err:
        # Template and tool errors happen before streaming starts: a real status code even for streams.
        state.metrics.fail(err.metric_label)
        return _error(err)
    if _early_fault(request, "chat", [setup.match_text]) == "unavailable":
        return _unavailable()
    if body.get("stream"):
        return _chat_stream(request, body, setup, start)
    try:
        job = await _generate_once(
            request,
            inputs=setup.inputs,
            params=setup.params,
            route="chat",
            match_text=setup.match_text,
            tail_source=setup.tail_source,
            start=start,
        )
    except InferError as err:
        return _error(err)
    except _ClientGone:
        return _empty(499)
    except _DropConnection:
        return await _drop_connection(request)
    plan = job.plan
    message: dict[str, Any]
    if setup.tool is not None:
        try:
            arguments = json.loads(plan.generated_text)
        except json.JSONDecodeError:
            return _error(InferError.tool(f"Failed to parse generated text: {plan.generated_text!r}"))
        message = {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "0",
                    "type": "function",
                    "function": {"name": setup.tool["function"]["name"], "arguments": arguments},
                }
            ],
        }
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
                "finish_reason": engine.chat_finish_reason(plan.finish_reason),
            }
        ],
        "usage": _usage(plan),
    }
    return _json(response, headers=job.timings.headers(state.config, len(setup.inputs), plan))


def _chat_stream(request: Request, body: dict[str, Any], setup: _ChatSetup, start: float) -> Response:
    state = _state(request)
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    want_logprobs = bool(body.get("logprobs"))
    header_fault = _header_fault(request)

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
        pacer = _Pacer(state.config)
        try:
            job = _prepare(
                request,
                inputs=setup.inputs,
                params=setup.params,
                route="chat",
                match_text=setup.match_text,
                tail_source=setup.tail_source,
                streaming=True,
                start=start,
            )
            plan = job.plan
            async for item in _token_events(job, pacer, state.scheduler):
                if isinstance(item, bytes):
                    yield item
                    continue
                index, token = item
                is_last = index == plan.generated_tokens
                finish = engine.chat_finish_reason(plan.finish_reason) if is_last else None
                delta: dict[str, Any]
                if setup.tool is not None:
                    delta = {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "0",
                                "type": "function",
                                "function": {
                                    "name": setup.tool["function"]["name"] if index == 1 else None,
                                    "arguments": "" if token.special else token.text,
                                },
                            }
                        ],
                    }
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
                yield chunk([], _usage(plan))
            _record_success(state, job)
        except InferError as err:
            state.metrics.fail(err.metric_label)
            yield error_event(err)
        except _DropConnection:
            async for nothing in _dropped_stream(request):
                yield nothing
            return
        finally:
            permit.release()
        yield protocol.SSE_DONE

    return StreamingResponse(stream(), headers=_stream_headers(state.config, len(setup.inputs)))


# --------------------------------------------------------------------------------------------------
# OpenAI-compatible (legacy) completions


def _completion_params(body: dict[str, Any], *, streaming: bool) -> GenerateParameters:
    temperature = body.get("temperature")
    return GenerateParameters(
        # TGI's completions route defaults to 100 new tokens, unlike chat.
        max_new_tokens=body.get("max_tokens") if body.get("max_tokens") is not None else 100,
        temperature=None if temperature == 0.0 else temperature,
        do_sample=not (temperature is not None and temperature == 0.0),
        top_p=body.get("top_p"),
        repetition_penalty=body.get("repetition_penalty"),
        frequency_penalty=body.get("frequency_penalty"),
        seed=body.get("seed"),
        stop=list(body.get("stop") or []),
        details=True,
        decoder_input_details=not streaming,
        adapter_id=body.get("model") if body.get("model") not in (None, "tgi") else None,
    )


async def completions(request: Request, body: dict[str, Any]) -> Response:
    """`POST /v1/completions`, streamed or not, one or several prompts."""
    state = _state(request)
    config = state.config
    prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
    if _early_fault(request, "completions", prompts) == "unavailable":
        return _unavailable()
    start = time.perf_counter()
    state.metrics.count("tgi_request_count")
    if body.get("suffix") is not None:
        state.metrics.fail("validation")
        return _json(
            {
                "error": "Suffix is not supported and can be achieved by preprocessing the prompt.",
                "error_type": "suffix not supported",
            },
            status=422,
        )
    if len(prompts) > config.max_client_batch_size:
        state.metrics.fail("validation")
        return _json(
            {
                "error": f"Number of prompts exceeds the maximum allowed batch size of {config.max_client_batch_size}",
                "error_type": "batch size exceeded",
            },
            status=422,
        )
    streaming = bool(body.get("stream"))
    if streaming:
        return _completions_stream(request, body, prompts, start)

    results = await asyncio.gather(
        *(
            _generate_once(
                request,
                inputs=prompt,
                params=_completion_params(body, streaming=False),
                route="completions",
                match_text=prompt,
                tail_source=prompt,
                start=start,
            )
            for prompt in prompts
        ),
        return_exceptions=True,
    )
    if any(isinstance(result, _DropConnection) for result in results):
        return await _drop_connection(request)
    for result in results:
        if isinstance(result, InferError):
            return _error(result)
        if isinstance(result, BaseException):
            if isinstance(result, _ClientGone):
                return _empty(499)
            raise result
    jobs = [r for r in results if isinstance(r, _Job)]
    choices = [
        {
            "index": index,
            "text": job.plan.generated_text,
            "logprobs": None,
            "finish_reason": engine.chat_finish_reason(job.plan.finish_reason),
        }
        for index, job in enumerate(jobs)
    ]
    prompt_tokens = sum(len(job.plan.prefill) for job in jobs)
    completion_tokens = sum(job.plan.generated_tokens for job in jobs)
    response = {
        "object": "text_completion",
        "id": "",
        "created": int(time.time()),
        "model": config.model_id,
        "system_fingerprint": state.system_fingerprint,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
    # Headers are the per-prompt headers summed, and TGI leaves out x-compute-time here.
    summed: dict[str, int] = {}
    for job in jobs:
        for name, value in job.timings.headers(config, len(job.valid.inputs), job.plan, compute_time=False).items():
            if name != "x-compute-type":
                summed[name] = summed.get(name, 0) + int(value)
    headers = {"x-compute-type": config.compute_type, **{k: str(v) for k, v in summed.items()}}
    return _json(response, headers=headers)


def _completions_stream(request: Request, body: dict[str, Any], prompts: list[str], start: float) -> Response:
    state = _state(request)
    config = state.config
    header_fault = _header_fault(request)
    params = _completion_params(body, streaming=True)

    def envelope(index: int, text: str, finish: str) -> dict[str, Any]:
        return {
            "object": "text_completion",
            "id": "",
            "created": int(time.time()),
            "model": config.model_id,
            "system_fingerprint": state.system_fingerprint,
            "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": finish}],
        }

    async def one_prompt(index: int, prompt: str, queue: asyncio.Queue[bytes | None | _DropConnection]) -> None:
        permit = None if header_fault == "overloaded" else state.try_acquire()
        if permit is None:
            state.metrics.fail("overloaded")
            await queue.put(protocol.sse_event(InferError.overloaded().body()))
            await queue.put(None)
            return
        pacer = _Pacer(config)
        try:
            job = _prepare(
                request,
                inputs=prompt,
                params=params,
                route="completions",
                match_text=prompt,
                tail_source=prompt,
                streaming=True,
                start=start,
            )
            async for item in _token_events(job, pacer, state.scheduler):
                if isinstance(item, bytes):
                    await queue.put(item)
                    continue
                position, token = item
                if position == job.plan.generated_tokens:
                    event = envelope(index, token.text, job.plan.finish_reason)
                    event["usage"] = _usage(job.plan)
                else:
                    event = envelope(index, token.text, "")
                pacer.sent()
                await queue.put(protocol.sse_event(event))
            _record_success(state, job)
        except InferError as err:
            state.metrics.fail(err.metric_label)
            # TGI turns per-prompt errors into `Event::from(InferError)`: the generate_stream shape.
            await queue.put(protocol.sse_event(err.body()))
        except _DropConnection as drop:
            await queue.put(drop)
        finally:
            permit.release()
            await queue.put(None)

    async def stream() -> AsyncIterator[bytes]:
        queue: asyncio.Queue[bytes | None | _DropConnection] = asyncio.Queue()
        tasks = [asyncio.create_task(one_prompt(i, p, queue)) for i, p in enumerate(prompts)]
        remaining = len(tasks)
        try:
            while remaining:
                item = await queue.get()
                if item is None:
                    remaining -= 1
                    continue
                if isinstance(item, _DropConnection):
                    # One prompt's disconnect fault takes the whole connection down, as a crash would.
                    async for nothing in _dropped_stream(request):
                        yield nothing
                    return
                yield item
            yield protocol.SSE_DONE
        finally:
            for task in tasks:
                task.cancel()

    return StreamingResponse(stream(), headers=_stream_headers(config, sum(len(p) for p in prompts)))


# --------------------------------------------------------------------------------------------------
# TEI


def _tei_texts(inputs: Any) -> list[str]:
    def as_text(item: Any) -> str:
        return item if isinstance(item, str) else " ".join(str(i) for i in item)

    if isinstance(inputs, str):
        return [inputs]
    if isinstance(inputs, list) and inputs and all(isinstance(i, int) for i in inputs):
        return [as_text(inputs)]
    return [as_text(item) for item in inputs]


class _TeiError(Exception):
    STATUS = {"Empty": 400, "Validation": 422, "Tokenizer": 422, "Backend": 424, "Overloaded": 429, "Unhealthy": 503}

    def __init__(self, error_type: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self._status = status

    @property
    def status(self) -> int:
        return self._status or self.STATUS[self.error_type]


async def _tei_embed(
    request: Request, inputs: Any, normalize: bool, truncate: bool, dimensions: int | None
) -> tuple[list[list[float]], dict[str, str]]:
    """TEI's embedding pipeline: faults, validation, tokenisation, pooling; raises _TeiError."""
    state = _state(request)
    config = state.config
    backend = state.embedder
    start = time.perf_counter()
    state.metrics.embed_counters["te_request_count"] += 1
    try:
        fault = _header_fault(request)
        if fault == "timeout":
            await _sleep_watching(request, config.stall_seconds)
        if fault == "overloaded":
            raise _TeiError("Overloaded", "Model is overloaded")
        if fault in ("generation", "midstream"):
            raise _TeiError("Backend", "Inference failed: injected fault (AIOS development server)")
        if fault == "server_error":
            # TEI itself has no 500 error type; this is a crashed backend behind it, in TEI's body shape.
            raise _TeiError("Backend", "Internal server error: injected fault (AIOS development server)", 500)
        if fault == "disconnect":
            raise _DropConnection
        texts = _tei_texts(inputs)
        if isinstance(inputs, list) and not inputs:
            raise _TeiError("Validation", "`inputs` cannot be empty")
        if len(texts) > config.embedding_max_client_batch_size:
            # The TEI spec says 413; the server really answers 422 with a capitalised error_type.
            raise _TeiError(
                "Validation",
                f"batch size {len(texts)} > maximum allowed batch size {config.embedding_max_client_batch_size}",
            )
        model_limit = await backend.max_input_length()
        max_input_length = min(config.embedding_max_input_length, model_limit or config.embedding_max_input_length)
        token_counts = []
        for count in await backend.count_tokens(texts):
            if count > max_input_length and not truncate:
                raise _TeiError(
                    "Validation",
                    f"Input validation error: `inputs` must have less than {max_input_length} tokens. Given: {count}",
                )
            token_counts.append(min(count, max_input_length))
        if dimensions is not None and not 0 < dimensions <= backend.dimensions:
            raise _TeiError(
                "Validation",
                f"`dimensions` must be > 0 and <= {backend.dimensions}. Given: {dimensions}",
            )
        tokenized = time.perf_counter()
        vectors = []
        for raw in await backend.vectors(texts, max_input_length):
            # As TEI: pool, cut to the requested (Matryoshka) dimensions, then normalise what is left.
            vector = raw[:dimensions] if dimensions is not None else raw
            vectors.append(embeddings.normalized(vector) if normalize else vector)
    except _TeiError:
        state.metrics.embed_counters["te_request_failure"] += 1
        raise
    end = time.perf_counter()
    state.metrics.embed_counters["te_request_success"] += 1
    headers = {
        "x-compute-type": config.compute_type,
        "x-compute-time": repr(end - start),
        "x-compute-characters": str(sum(len(t) for t in texts)),
        "x-compute-tokens": str(sum(token_counts)),
        "x-total-time": str(int((end - start) * 1000)),
        "x-tokenization-time": str(int((tokenized - start) * 1000)),
        "x-queue-time": "0",
        "x-inference-time": str(int((end - tokenized) * 1000)),
    }
    return vectors, headers


async def embed(request: Request, body: dict[str, Any]) -> Response:
    """TEI `POST /embed`: `[[f32, ...], ...]`."""
    try:
        vectors, headers = await _tei_embed(
            request,
            body["inputs"],
            normalize=body.get("normalize", True),
            truncate=bool(body.get("truncate")),
            dimensions=body.get("dimensions"),
        )
    except _TeiError as err:
        return _json({"error": err.message, "error_type": err.error_type}, status=err.status)
    except _ClientGone:
        return _empty(499)
    except _DropConnection:
        return await _drop_connection(request)
    return Response(protocol.embeddings_json(vectors), headers=headers, media_type=protocol.JSON_CONTENT_TYPE)


async def openai_embeddings(request: Request, body: dict[str, Any]) -> Response:
    """TEI's OpenAI-compatible `POST /v1/embeddings`."""
    try:
        vectors, headers = await _tei_embed(
            request, body["input"], normalize=True, truncate=False, dimensions=body.get("dimensions")
        )
    except _TeiError as err:
        return _json({"message": err.message, "code": err.status, "type": err.error_type}, status=err.status)
    except _ClientGone:
        return _empty(499)
    except _DropConnection:
        return await _drop_connection(request)
    as_base64 = body.get("encoding_format") == "base64"
    rows = []
    for index, vector in enumerate(vectors):
        if as_base64:
            encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
            embedding = json.dumps(encoded)
        else:
            embedding = "[" + ",".join(protocol.f32_text(x) for x in vector) + "]"
        rows.append(f'{{"object":"embedding","embedding":{embedding},"index":{index}}}')
    tokens = int(headers["x-compute-tokens"])
    usage = protocol.dumps({"prompt_tokens": tokens, "total_tokens": tokens}).decode("utf-8")
    model = json.dumps(_state(request).embedding_model_id)
    payload = f'{{"object":"list","data":[{",".join(rows)}],"model":{model},"usage":{usage}}}'
    return Response(payload.encode("utf-8"), headers=headers, media_type=protocol.JSON_CONTENT_TYPE)


# --------------------------------------------------------------------------------------------------
# Application


async def _not_found_or_not_allowed(request: Request, exc: Exception) -> Response:
    # axum answers unknown routes with an empty 404 and wrong methods with an empty 405.
    status = exc.status_code if isinstance(exc, HTTPException) else 404
    return _empty(status)


class _DevServerApp(Starlette):
    """Starlette, plus access to each HTTP connection's transport for the disconnect fault.

    ASGI has no message for "drop this connection without answering", so the disconnect fault closes the
    transport itself. uvicorn's `send` is a method of its per-request cycle object, which holds the
    transport; it is looked up here, before Starlette's middleware wraps `send`.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            transport = getattr(getattr(send, "__self__", None), "transport", None)
            if transport is not None and callable(getattr(transport, "close", None)):
                scope[_TRANSPORT_KEY] = transport
        await super().__call__(scope, receive, send)


def create_app(config: DevServerConfig, script: Script | None = None) -> Starlette:
    """The development server's ASGI application.

    `script` overrides `config.script` (tests build scripts inline); with neither, only schema-shaped
    values and the deterministic fallback are served.
    """
    if script is None:
        script = Script.load(config.script) if config.script else Script.empty()
    routes = [
        Route("/", root, methods=["GET", "POST"]),
        Route("/generate", _post(protocol.GENERATE_REQUEST, generate), methods=["POST"]),
        Route("/generate_stream", _post(protocol.GENERATE_REQUEST, generate_stream), methods=["POST"]),
        Route("/tokenize", _post(protocol.GENERATE_REQUEST, tokenize), methods=["POST"]),
        Route("/v1/chat/completions", _post(protocol.CHAT_REQUEST, chat_completions), methods=["POST"]),
        Route("/v1/completions", _post(protocol.COMPLETION_REQUEST, completions), methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/info", info, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/ping", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/embed", _post(protocol.EMBED_REQUEST, embed), methods=["POST"]),
        Route("/v1/embeddings", _post(protocol.OPENAI_EMBED_REQUEST, openai_embeddings), methods=["POST"]),
        Route("/embeddings", _post(protocol.OPENAI_EMBED_REQUEST, openai_embeddings), methods=["POST"]),
    ]
    app = _DevServerApp(
        routes=routes,
        exception_handlers={404: _not_found_or_not_allowed, 405: _not_found_or_not_allowed},
    )
    app.state.devserver = DevServerState(config, script)
    return app
