"""OpenAI-compatible (legacy) completions (`/v1/completions`): one or several prompts, streamed or not."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from . import engine, protocol
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
    openai_usage,
    stream_headers,
    unavailable_response,
)
from .state import state_of


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
    state = state_of(request)
    config = state.config
    prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
    if early_fault(request, "completions", prompts) == "unavailable":
        return unavailable_response()
    start = time.perf_counter()
    state.metrics.count("tgi_request_count")
    if body.get("suffix") is not None:
        state.metrics.fail("validation")
        return json_response(
            {
                "error": "Suffix is not supported and can be achieved by preprocessing the prompt.",
                "error_type": "suffix not supported",
            },
            status=422,
        )
    if len(prompts) > config.max_client_batch_size:
        state.metrics.fail("validation")
        return json_response(
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
            generate_once(
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
    if any(isinstance(result, DropConnection) for result in results):
        return await drop_connection(request)
    for result in results:
        if isinstance(result, InferError):
            return error_response(result)
        if isinstance(result, BaseException):
            if isinstance(result, ClientGone):
                return empty_response(499)
            raise result
    jobs = [r for r in results if isinstance(r, Job)]
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
    return json_response(response, headers=headers)


def _completions_stream(request: Request, body: dict[str, Any], prompts: list[str], start: float) -> Response:
    state = state_of(request)
    config = state.config
    header_fault = fault_from_header(request)
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

    async def one_prompt(index: int, prompt: str, queue: asyncio.Queue[bytes | None | DropConnection]) -> None:
        permit = None if header_fault == "overloaded" else state.try_acquire()
        if permit is None:
            state.metrics.fail("overloaded")
            await queue.put(protocol.sse_event(InferError.overloaded().body()))
            await queue.put(None)
            return
        pacer = Pacer(config)
        try:
            job = prepare(
                request,
                inputs=prompt,
                params=params,
                route="completions",
                match_text=prompt,
                tail_source=prompt,
                streaming=True,
                start=start,
            )
            async for item in token_events(job, pacer, state.scheduler):
                if isinstance(item, bytes):
                    await queue.put(item)
                    continue
                position, token = item
                if position == job.plan.generated_tokens:
                    event = envelope(index, token.text, job.plan.finish_reason)
                    event["usage"] = openai_usage(job.plan)
                else:
                    event = envelope(index, token.text, "")
                pacer.sent()
                await queue.put(protocol.sse_event(event))
            record_success(state, job)
        except InferError as err:
            state.metrics.fail(err.metric_label)
            # TGI turns per-prompt errors into `Event::from(InferError)`: the generate_stream shape.
            await queue.put(protocol.sse_event(err.body()))
        except DropConnection as drop:
            await queue.put(drop)
        finally:
            permit.release()
            await queue.put(None)

    async def stream() -> AsyncIterator[bytes]:
        queue: asyncio.Queue[bytes | None | DropConnection] = asyncio.Queue()
        tasks = [asyncio.create_task(one_prompt(i, p, queue)) for i, p in enumerate(prompts)]
        remaining = len(tasks)
        try:
            while remaining:
                item = await queue.get()
                if item is None:
                    remaining -= 1
                    continue
                if isinstance(item, DropConnection):
                    # One prompt's disconnect fault takes the whole connection down, as a crash would.
                    async for nothing in dropped_stream(request):
                        yield nothing
                    return
                yield item
            yield protocol.SSE_DONE
        finally:
            for task in tasks:
                task.cancel()

    return StreamingResponse(stream(), headers=stream_headers(config, sum(len(p) for p in prompts)))
