"""TGI's native routes: `/`, `/generate`, `/generate_stream`, `/tokenize`, `/info`, `/health`, `/metrics`,
and `/v1/models`."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from . import engine, protocol, tokenizer
from .bodies import post_endpoint
from .engine import GenerateParameters, InferError
from .faults import early_fault, fault_from_header
from .jobs import Job, Pacer, generate_once, prepare, record_success, token_events
from .responses import (
    ClientGone,
    DropConnection,
    drop_connection,
    dropped_stream,
    empty_response,
    error_response,
    json_response,
    plain_response,
    stream_headers,
    unavailable_response,
)
from .state import state_of


def _generate_response_body(job: Job) -> dict[str, Any]:
    params = job.valid.params
    body: dict[str, Any] = {"generated_text": job.full_text_prefix + job.plan.generated_text}
    if params.details or params.decoder_input_details:
        body["details"] = engine.details(job.plan, params.best_of or 1, job.full_text_prefix)
    return body


async def _generate(request: Request, inputs: str, params: GenerateParameters, *, wrap_in_list: bool) -> Response:
    state = state_of(request)
    if early_fault(request, "generate", [inputs]) == "unavailable":
        return unavailable_response()
    start = time.perf_counter()
    state.metrics.count("tgi_request_count")
    try:
        job = await generate_once(
            request, inputs=inputs, params=params, route="generate", match_text=inputs, tail_source=inputs, start=start
        )
    except InferError as err:
        return error_response(err)
    except ClientGone:
        return empty_response(499)
    except DropConnection:
        return await drop_connection(request)
    body = _generate_response_body(job)
    headers = job.timings.headers(state.config, len(inputs), job.plan)
    # The compat route wraps the response in a list "to match api-inference" (TGI's comment).
    return json_response([body] if wrap_in_list else body, headers=headers)


def _generate_stream(request: Request, inputs: str, params: GenerateParameters) -> Response:
    state = state_of(request)
    if early_fault(request, "generate", [inputs]) == "unavailable":
        return unavailable_response()
    start = time.perf_counter()
    state.metrics.count("tgi_request_count")
    header_fault = fault_from_header(request)

    async def body() -> AsyncIterator[bytes]:
        # Everything below happens after the 200 and the headers are out: TGI reports validation
        # errors, overload and generation failures in-band, as one error event.
        permit = None if header_fault == "overloaded" else state.try_acquire()
        if permit is None:
            state.metrics.fail("overloaded")
            yield protocol.sse_event(InferError.overloaded().body())
            return
        pacer = Pacer(state.config)
        try:
            job = prepare(
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
            async for item in token_events(job, pacer, state.scheduler):
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
            record_success(state, job)
        except InferError as err:
            state.metrics.fail(err.metric_label)
            yield protocol.sse_event(err.body())
        except DropConnection:
            async for nothing in dropped_stream(request):
                yield nothing
        finally:
            permit.release()

    return StreamingResponse(body(), headers=stream_headers(state.config, len(inputs)))


async def compat_generate(request: Request, body: dict[str, Any]) -> Response:
    """`POST /`: TGI's compat route; a list response, or SSE when `stream` is true."""
    params = GenerateParameters.from_request(body.get("parameters"))
    if params.return_full_text is None:
        params.return_full_text = state_of(request).config.return_full_text_default
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
    return json_response([{"id": p.id, "text": p.text, "start": p.start, "stop": p.stop} for p in pieces])


async def info(request: Request) -> Response:
    """`GET /info`."""
    return json_response(state_of(request).info())


async def health(request: Request) -> Response:
    """`GET /health` (also `GET /` and `GET /ping`): 200 with an empty body."""
    return empty_response(200)


async def root(request: Request) -> Response:
    if request.method == "POST":
        return await post_endpoint(protocol.COMPAT_GENERATE_REQUEST, compat_generate)(request)
    return empty_response(200)


async def metrics(request: Request) -> Response:
    """`GET /metrics`: Prometheus text."""
    state = state_of(request)
    scheduler = state.scheduler
    return plain_response(
        200,
        state.metrics.render(
            queue_size=scheduler.queue_size, batch_size=scheduler.batch_size, batch_tokens=scheduler.batch_tokens
        ),
    )


async def models(request: Request) -> Response:
    """`GET /v1/models`: a list wrapper (the TGI spec wrongly documents a bare ModelInfo)."""
    model_id = state_of(request).config.model_id
    return json_response(
        {"object": "list", "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": model_id}]}
    )
