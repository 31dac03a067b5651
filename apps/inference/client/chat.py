"""Chat over the OpenAI-compatible `/v1/chat/completions`, which TGI, vLLM, SGLang and llama.cpp all
speak: messages in, with response formats, tools, stop strings and log-probabilities; streamed
(`achat_stream`) or not (`achat`).

TGI ends a chat stream with `data:[DONE]` (no space), which huggingface_hub up to 2.4.0 fails to parse
(`reference/tgi-protocol.md`, section 9); a stream here ends at the usage chunk that follows the finish,
so the sentinel is never read.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from apps.inference.errors import InferenceGenerationError

from .failures import redact_url
from .results import (
    InferenceResult,
    OnToken,
    TokenLogprob,
    elapsed_ms,
    logprob_value,
    model_from_server,
    normalise_finish_reason,
)
from .retries import Delivery, with_retries
from .transport import Endpoint, aclose


@dataclass(frozen=True)
class ChatRequest:
    """What to ask over the OpenAI-compatible chat protocol.

    `response_format` is passed through (TGI's `{"type": "json_object" | "regex", "value": ...}` or OpenAI's
    json_schema form, which huggingface_hub rewrites for TGI). `model` is the payload's model name (vLLM
    needs the served name; TGI ignores it). `stop` ends the reply at any of the strings. `tools` are
    OpenAI function tools (`{"type": "function", "function": {"name", "description", "parameters"}}`) and
    `tool_choice` is "auto", "none", "required" or `{"type": "function", "function": {"name": ...}}`; the
    calls the model makes land in `result.tool_calls`. TGI refuses `tools` together with
    `response_format`. `logprobs` / `top_logprobs` (implies `logprobs`) fill `result.tokens`. Chat replies
    report no seed, so `result.seed` is the requested one, which is what reproduces the call.
    """

    messages: Sequence[dict[str, Any]]
    max_tokens: int
    temperature: float | None = None
    seed: int | None = None
    stop: Sequence[str] = ()
    response_format: dict[str, Any] | None = None
    model: str | None = None
    tools: Sequence[dict[str, Any]] = ()
    tool_choice: str | dict[str, Any] | None = None
    logprobs: bool = False
    top_logprobs: int | None = None

    @property
    def wants_logprobs(self) -> bool:
        return self.logprobs or bool(self.top_logprobs)

    def hub_arguments(self, *, stream: bool) -> dict[str, Any]:
        """The keyword arguments of huggingface_hub's `chat_completion`, messages aside."""
        logprobs = self.wants_logprobs
        arguments: dict[str, Any] = {
            "stream": stream,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "seed": self.seed,
            "response_format": self.response_format,
            "model": self.model,
            "stop": list(self.stop) if self.stop else None,
            "tools": list(self.tools) if self.tools else None,
            "tool_choice": self.tool_choice,
            # OpenAI's protocol refuses top_logprobs without logprobs; huggingface_hub drops the None values.
            "logprobs": True if logprobs else None,
            "top_logprobs": self.top_logprobs if logprobs and self.top_logprobs else None,
        }
        if stream:
            # Without usage in the stream there is no token count to bill or record.
            arguments["stream_options"] = {"include_usage": True}
        return arguments


def _chat_token(entry: Mapping[str, Any]) -> TokenLogprob:
    return TokenLogprob(
        text=str(entry.get("token")),
        logprob=logprob_value(entry.get("logprob")),
        top=tuple(
            (str(alt.get("token")), logprob_value(alt.get("logprob"))) for alt in entry.get("top_logprobs") or ()
        ),
    )


def _chat_tokens(logprobs: Mapping[str, Any] | None) -> list[TokenLogprob]:
    if not logprobs:
        return []
    return [_chat_token(entry) for entry in logprobs.get("content") or ()]


def _tool_arguments(value: Any) -> Any:
    """Arguments as JSON values: OpenAI sends a JSON string, TGI an object; text that is not JSON (a model
    that ignored the schema) is kept as it came, for the caller to judge."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    # A copy through JSON, so the result holds plain JSON values, not huggingface_hub's objects.
    return json.loads(json.dumps(value))


def _tool_call(call_id: Any, name: Any, arguments: Any) -> dict[str, Any]:
    return {
        "id": None if call_id is None else str(call_id),
        "name": None if name is None else str(name),
        "arguments": _tool_arguments(arguments),
    }


@dataclass
class _ToolCallParts:
    """One streamed tool call: its id and name come once, its arguments in fragments."""

    call_id: Any = None
    name: Any = None
    arguments: list[str] = field(default_factory=list)

    def add(self, fragment: Mapping[str, Any]) -> None:
        self.call_id = self.call_id if self.call_id is not None else fragment.get("id")
        function = fragment.get("function") or {}
        if function.get("name"):
            self.name = function["name"]
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            self.arguments.append(arguments)
        elif arguments is not None:
            self.arguments.append(json.dumps(arguments))


class _ChatState:
    """Accumulates chat chunks; knows when the stream is over even if the sentinel is unreadable."""

    def __init__(self, base_url: str, started: float, logprobs: bool) -> None:
        self.base_url = redact_url(base_url)
        self.started = started
        self.logprobs = logprobs
        self.ttft_ms: float | None = None
        self.parts: list[str] = []
        self.tokens: list[TokenLogprob] = []
        self.tool_calls: dict[int, _ToolCallParts] = {}
        self.finish_reason: str | None = None
        self.usage: Any = None
        self.model: str | None = None
        self.chunks = 0

    def chunk(self, chunk: Any) -> list[str]:
        """Record one chunk; returns the texts to hand to on_token (content only: tool-call arguments
        are assembled into `tool_calls`, not streamed to the reader)."""
        texts: list[str] = []
        self.model = chunk.model or self.model
        if chunk.usage is not None:
            self.usage = chunk.usage
        for choice in chunk.choices or []:
            if self.ttft_ms is None:
                self.ttft_ms = elapsed_ms(self.started)
            self.chunks += 1
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if content:
                self.parts.append(content)
                texts.append(content)
            for fragment in delta.get("tool_calls") or ():
                self.tool_calls.setdefault(int(fragment.get("index") or 0), _ToolCallParts()).add(fragment)
            if self.logprobs:
                self.tokens.extend(_chat_tokens(choice.get("logprobs")))
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason
        return texts

    @property
    def done(self) -> bool:
        # We always ask for usage, so the usage chunk (after the finish) is the last useful event; a
        # server that ignores stream_options ends at the sentinel instead.
        return self.finish_reason is not None and self.usage is not None

    def end_of_stream_error(self, exc: BaseException) -> bool:
        """Whether `exc` is huggingface_hub choking on TGI's `data:[DONE]` after a finished reply."""
        return isinstance(exc, json.JSONDecodeError) and self.finish_reason is not None

    def result(self, seed: int | None) -> InferenceResult:
        if self.finish_reason is None:
            raise InferenceGenerationError(
                f"The inference server at {self.base_url} ended the reply before the generation finished.",
                base_url=self.base_url,
            )
        usage = self.usage
        return InferenceResult(
            text="".join(self.parts),
            generated_tokens=usage.completion_tokens if usage is not None else self.chunks,
            prompt_tokens=usage.prompt_tokens if usage is not None else None,
            finish_reason=normalise_finish_reason(self.finish_reason),
            model_id=model_from_server(self.model),
            ttft_ms=self.ttft_ms,
            latency_ms=elapsed_ms(self.started),
            # Chat replies do not report a seed; the requested one is what reproduces the call.
            seed=seed,
            tokens=tuple(self.tokens),
            tool_calls=tuple(
                _tool_call(parts.call_id, parts.name, "".join(parts.arguments))
                for _, parts in sorted(self.tool_calls.items())
            ),
        )


def _chat_result(output: Any, *, base_url: str, started: float, logprobs: bool, seed: int | None) -> InferenceResult:
    """An InferenceResult from a non-streamed `ChatCompletionOutput`."""
    choices = output.get("choices") or []
    if not choices:
        where = redact_url(base_url)
        raise InferenceGenerationError(f"The inference server at {where} sent a reply with no choices.", base_url=where)
    choice = choices[0]
    message = choice.get("message") or {}
    usage = output.get("usage")
    tool_calls = tuple(
        _tool_call(
            call.get("id"), (call.get("function") or {}).get("name"), (call.get("function") or {}).get("arguments")
        )
        for call in message.get("tool_calls") or ()
    )
    return InferenceResult(
        text=str(message.get("content") or ""),
        generated_tokens=int(usage.get("completion_tokens") or 0) if usage else 0,
        prompt_tokens=usage.get("prompt_tokens") if usage else None,
        finish_reason=normalise_finish_reason(choice.get("finish_reason")),
        model_id=model_from_server(output.get("model")),
        ttft_ms=None,
        latency_ms=elapsed_ms(started),
        seed=seed,
        tokens=tuple(_chat_tokens(choice.get("logprobs"))) if logprobs else (),
        tool_calls=tool_calls,
    )


async def achat_stream(
    endpoint: Endpoint,
    request: ChatRequest,
    *,
    on_token: OnToken,
    retries: int = 0,
    backoff: float = 0.5,
) -> InferenceResult:
    """Chat, streaming the reply's content to `on_token` (a function, or a coroutine function).

    Tool-call argument fragments are assembled into `result.tool_calls`, not passed to `on_token`. Ends
    at the usage chunk that follows the finish, so TGI's unparseable `data:[DONE]` is never read; a
    JSONDecodeError after a finish is taken as the end, before one as a broken stream. Retries as
    `agenerate_stream` does. Raises an `InferenceError` subclass.
    """
    arguments = request.hub_arguments(stream=True)
    messages = list(request.messages)
    delivery = Delivery(on_token)
    started = time.perf_counter()

    async def attempt() -> InferenceResult:
        state = _ChatState(endpoint.base_url, started, request.wants_logprobs)
        async with endpoint.session() as client:
            try:
                chunks = aiter(await client.chat_completion(messages, **arguments))
            except Exception as exc:
                raise endpoint.error(exc) from exc
            try:
                while not state.done:
                    try:
                        chunk = await anext(chunks)
                    except StopAsyncIteration:
                        break
                    except Exception as exc:
                        if state.end_of_stream_error(exc):
                            break
                        raise endpoint.error(exc) from exc
                    for text in state.chunk(chunk):
                        await delivery(text)
            finally:
                await aclose(chunks)
        return state.result(request.seed)

    return await with_retries(attempt, retries=retries, backoff=backoff, delivery=delivery)


async def achat(endpoint: Endpoint, request: ChatRequest, *, retries: int = 0, backoff: float = 0.5) -> InferenceResult:
    """`achat_stream` without streaming (`stream=False`): one request, one reply.

    `endpoint.timeout` bounds the wait for the whole reply; `result.ttft_ms` is None. Every retryable
    failure is retried, since no part of a reply is ever delivered early.
    """
    arguments = request.hub_arguments(stream=False)
    messages = list(request.messages)
    started = time.perf_counter()

    async def attempt() -> InferenceResult:
        async with endpoint.session() as client:
            try:
                output = await client.chat_completion(messages, **arguments)
            except Exception as exc:
                raise endpoint.error(exc) from exc
        return _chat_result(
            output, base_url=endpoint.base_url, started=started, logprobs=request.wants_logprobs, seed=request.seed
        )

    return await with_retries(attempt, retries=retries, backoff=backoff)
