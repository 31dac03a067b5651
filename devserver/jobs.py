"""Jobs: one validated, planned generation holding a concurrency permit, paced through the batch."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.requests import Request

from . import engine, protocol
from .batching import BatchScheduler, Sequence
from .config import DevServerConfig
from .engine import GenerateParameters, InferError, Plan, ValidRequest
from .faults import CUT_FAULTS, Fault, cut_fault_error, fault_from_header, injected_generation_error, request_fault
from .responses import ClientGone, Timings
from .scripts import choose_reply
from .state import DevServerState, state_of

logger = logging.getLogger("aios.devserver")

_DISCONNECT_POLL_SECONDS = 0.05


@dataclass
class Job:
    valid: ValidRequest
    plan: Plan
    fault: Fault
    timings: Timings
    full_text_prefix: str
    reply_source: str

    @property
    def reserved_tokens(self) -> int:
        """The token budget the batch gauges count for this request, as TGI's do."""
        return self.valid.input_length + self.valid.max_new_tokens

    def tokens_before_fault(self) -> int:
        """How many tokens go out: all of them, or as many as a cutting fault allows."""
        if self.fault.kind in CUT_FAULTS:
            return min(self.fault.after_tokens, self.plan.generated_tokens)
        return self.plan.generated_tokens


def prepare(
    request: Request,
    *,
    inputs: str,
    params: GenerateParameters,
    route: str,
    match_text: str,
    tail_source: str,
    streaming: bool,
    start: float,
    tool_calls_allowed: bool = False,
) -> Job:
    """Validate and plan one generation (the caller holds a permit). Raises InferError.

    `tool_calls_allowed`: a rule's tool calls may be the reply (the chat route, with tools offered).
    """
    state = state_of(request)
    valid = engine.validate(inputs, params, state.config, streaming=streaming)
    queued = time.perf_counter()
    reply = choose_reply(
        state.script,
        route=route,
        match_text=match_text,
        tail_source=tail_source,
        constraint=valid.constraint,
        tool_calls_allowed=tool_calls_allowed,
    )
    if reply.rule:
        logger.debug("scripted reply from %s (%s)", reply.rule, reply.source)
    plan = engine.build_plan(reply.text, valid, reply.logprobs, reply.pieces)
    prefix = inputs if params.return_full_text else ""
    fault = request_fault(request, reply.fault, reply.fault_after_tokens)
    state.metrics.observe("tgi_request_input_length", valid.input_length)
    state.metrics.observe("tgi_request_max_new_tokens", valid.max_new_tokens)
    return Job(valid, plan, fault, Timings(start, queued, queued), prefix, reply.source)


class Pacer:
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


async def token_events(
    job: Job, pacer: Pacer, scheduler: BatchScheduler
) -> AsyncIterator[tuple[int, engine.GenToken] | bytes]:
    """The plan's tokens as the batch produces them (and keep-alives between them).

    Raises InferError for faults, `DropConnection` for the disconnect fault.
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
        raise injected_generation_error()
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
    if kind in CUT_FAULTS:
        raise cut_fault_error(kind, streaming=True)


async def _wait_or_keep_alive(sequence: Sequence, pacer: Pacer) -> bool:
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


async def sleep_watching(request: Request, seconds: float) -> None:
    """Sleep, but stop early (raising ClientGone) if the client disconnects, freeing the permit."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return
        await asyncio.sleep(min(remaining, _DISCONNECT_POLL_SECONDS))
        if remaining > _DISCONNECT_POLL_SECONDS and await request.is_disconnected():
            raise ClientGone


async def _generate_watching(request: Request, job: Job, tokens: int) -> None:
    """Run `tokens` tokens (0: prefill only) through the batch; raise ClientGone if the client leaves."""
    scheduler = state_of(request).scheduler
    sequence = scheduler.submit(tokens, reserved_tokens=job.reserved_tokens, on_admit=job.timings.admitted)
    try:
        while not sequence.finished:
            await asyncio.wait({sequence.done}, timeout=_DISCONNECT_POLL_SECONDS)
            if not sequence.finished and await request.is_disconnected():
                raise ClientGone
    finally:
        scheduler.cancel(sequence)


async def _run_to_completion(request: Request, job: Job) -> None:
    """Generate a non-stream reply: the client sees nothing until the whole reply is ready.

    Raises InferError for faults, `DropConnection` for the disconnect fault, `ClientGone` when the
    client leaves first.
    """
    config = state_of(request).config
    kind = job.fault.kind
    if kind == "timeout":
        await sleep_watching(request, config.stall_seconds)
    if kind == "overloaded":
        raise InferError.overloaded()
    if kind == "generation":
        # The backend fails during prefill: the time to first token passes, then the error.
        await _generate_watching(request, job, 0)
        raise injected_generation_error()
    await _generate_watching(request, job, job.tokens_before_fault())
    if kind in CUT_FAULTS:
        raise cut_fault_error(kind, streaming=False)
    job.timings.end = time.perf_counter()


def record_success(state: DevServerState, job: Job) -> None:
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


async def generate_once(
    request: Request,
    *,
    inputs: str,
    params: GenerateParameters,
    route: str,
    match_text: str,
    tail_source: str,
    start: float,
    tool_calls_allowed: bool = False,
) -> Job:
    """A whole non-stream generation under a permit; raises InferError or ClientGone."""
    state = state_of(request)
    permit = None if fault_from_header(request) == "overloaded" else state.try_acquire()
    if permit is None:
        state.metrics.fail("overloaded")
        raise InferError.overloaded()
    try:
        try:
            job = prepare(
                request,
                inputs=inputs,
                params=params,
                route=route,
                match_text=match_text,
                tail_source=tail_source,
                streaming=False,
                start=start,
                tool_calls_allowed=tool_calls_allowed,
            )
            await _run_to_completion(request, job)
        except InferError as err:
            state.metrics.fail(err.metric_label)
            raise
        record_success(state, job)
        return job
    finally:
        permit.release()
