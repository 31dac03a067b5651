"""Responses shaped as TGI's router writes them, and the ways a faulted request ends its connection."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from . import protocol
from .config import DevServerConfig
from .engine import InferError, Plan

# How long a handler that dropped its connection waits for the server to notice before giving up.
_DROP_WAIT_SECONDS = 2.0
# Where the application leaves the connection's transport for the disconnect fault.
TRANSPORT_KEY = "aios.transport"
UNAVAILABLE_TEXT = "Service Unavailable: no healthy upstream (injected fault, AIOS development server)"


class ClientGone(Exception):
    """The client hung up while we were pacing a non-stream reply."""


class DropConnection(Exception):
    """The disconnect fault fired: the connection must close without another byte."""


def json_response(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(protocol.dumps(value), status_code=status, headers=headers, media_type=protocol.JSON_CONTENT_TYPE)


def plain_response(status: int, text: str) -> Response:
    return Response(text.encode("utf-8"), status_code=status, headers={"content-type": protocol.PLAIN_CONTENT_TYPE})


def empty_response(status: int) -> Response:
    return Response(b"", status_code=status)


def error_response(err: InferError) -> Response:
    return json_response(err.body(), status=err.status)


def unavailable_response() -> Response:
    """The unavailable fault: what a load balancer in front of the server answers when it is down."""
    return plain_response(503, UNAVAILABLE_TEXT)


async def drop_connection(request: Request) -> Response:
    """Close the client's connection without a response (the disconnect fault on a non-stream request).

    Returns a response for Starlette to send into the void: once the server has seen the connection go,
    it drops whatever the application sends.
    """
    close_transport(request)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _DROP_WAIT_SECONDS
    while not await request.is_disconnected() and loop.time() < deadline:
        await asyncio.sleep(0.01)
    return empty_response(500)


def close_transport(request: Request) -> None:
    transport = request.scope.get(TRANSPORT_KEY)
    if transport is None:
        # Not under uvicorn: an exception is the nearest thing (the server answers 500 or resets).
        raise RuntimeError("the disconnect fault needs the connection's transport (run under uvicorn)")
    transport.close()


async def dropped_stream(request: Request) -> AsyncIterator[bytes]:
    """End a stream by closing its connection mid-body: no error event, no final event, no last chunk."""
    close_transport(request)
    # Starlette cancels the stream as soon as the server reports the disconnect; the sleep only bounds
    # the wait if it never does. Nothing may be yielded after the close.
    await asyncio.sleep(_DROP_WAIT_SECONDS)
    return
    yield b""  # an async generator, for the callers' `async for`


def stream_headers(config: DevServerConfig, characters: int) -> dict[str, str]:
    # Written before generation starts, which is why TGI sends no timing or token headers on streams.
    return {
        "content-type": protocol.SSE_CONTENT_TYPE,
        "cache-control": "no-cache",
        "x-compute-type": config.compute_type,
        "x-compute-characters": str(characters),
        "x-accel-buffering": "no",
    }


@dataclass
class Timings:
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


def openai_usage(plan: Plan) -> dict[str, int]:
    return {
        "prompt_tokens": plan.input_length,
        "completion_tokens": plan.generated_tokens,
        "total_tokens": plan.input_length + plan.generated_tokens,
    }
