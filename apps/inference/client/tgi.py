"""TGI's native generation (`text_generation`, posted to TGI's `/`): a raw prompt in, with grammars, stop
strings, seeds, details and token log-probabilities; streamed (`agenerate_stream`) or not (`agenerate`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from apps.inference.errors import InferenceGenerationError

from .failures import guarded, redact_url
from .results import (
    InferenceResult,
    OnToken,
    TokenLogprob,
    elapsed_ms,
    logprob_value,
    normalise_finish_reason,
)
from .retries import Delivery, with_retries
from .transport import Endpoint, aclose


@dataclass(frozen=True)
class GenerateRequest:
    """What to ask of TGI's native protocol (named after TGI's own `GenerateRequest`).

    `grammar` is TGI's `{"type": "json" | "regex" | "json_schema", "value": ...}`. `logprobs` fills
    `result.tokens` (special tokens included, marked); `top_logprobs` (TGI's `top_n_tokens`, at most 5 by
    default; implies `logprobs`) adds that many alternatives per position.
    """

    prompt: str
    max_new_tokens: int
    temperature: float | None = None
    seed: int | None = None
    stop: Sequence[str] = ()
    grammar: dict[str, Any] | None = None
    logprobs: bool = False
    top_logprobs: int | None = None

    @property
    def wants_logprobs(self) -> bool:
        return self.logprobs or bool(self.top_logprobs)

    def hub_arguments(self, *, stream: bool) -> dict[str, Any]:
        """The keyword arguments of huggingface_hub's `text_generation`."""
        return {
            "stream": stream,
            # Finish reason, token counts and seed live in the details; stream events carry each token's
            # log-probability either way, non-streamed replies only with details.
            "details": True,
            # TGI's `/` (where huggingface_hub posts) echoes the prompt unless told otherwise.
            "return_full_text": False,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "seed": self.seed,
            "stop": list(self.stop) if self.stop else None,
            "grammar": self.grammar,
            "top_n_tokens": self.top_logprobs if self.wants_logprobs and self.top_logprobs else None,
        }


def _tgi_token(token: Mapping[str, Any], top: Sequence[Mapping[str, Any]] | None) -> TokenLogprob:
    # huggingface_hub's response types are dicts as well as dataclasses, and it leaves nested lists (TGI's
    # `top_tokens` rows) as plain dicts, so everything is read as a mapping.
    return TokenLogprob(
        text=str(token.get("text")),
        logprob=logprob_value(token.get("logprob")),
        top=tuple((str(alt.get("text")), logprob_value(alt.get("logprob"))) for alt in top or ()),
        special=bool(token.get("special")),
    )


class _GenerationState:
    """Accumulates a TGI token stream into an InferenceResult."""

    def __init__(self, base_url: str, model_id: str | None, started: float, logprobs: bool) -> None:
        self.base_url = redact_url(base_url)
        self.model_id = model_id
        self.started = started
        self.logprobs = logprobs
        self.ttft_ms: float | None = None
        self.parts: list[str] = []
        self.tokens: list[TokenLogprob] = []
        self.final: Any = None

    def token(self, event: Any) -> str | None:
        """Record one stream event; returns the text to hand to on_token, if any."""
        if self.ttft_ms is None:
            self.ttft_ms = elapsed_ms(self.started)
        if event.details is not None or event.generated_text is not None:
            self.final = event
        token = event.token
        if self.logprobs:
            self.tokens.append(_tgi_token(token, event.get("top_tokens")))
        if token.special:
            return None
        self.parts.append(token.text)
        return str(token.text)

    def result(self) -> InferenceResult:
        final = self.final
        if final is None:
            raise InferenceGenerationError(
                f"The inference server at {self.base_url} ended the reply before the generation finished.",
                base_url=self.base_url,
            )
        details = final.details
        text = final.generated_text if final.generated_text is not None else "".join(self.parts)
        return InferenceResult(
            text=text,
            generated_tokens=details.generated_tokens if details is not None else len(self.parts),
            prompt_tokens=details.input_length if details is not None else None,
            finish_reason=normalise_finish_reason(details.finish_reason if details is not None else None),
            model_id=self.model_id,
            ttft_ms=self.ttft_ms,
            latency_ms=elapsed_ms(self.started),
            seed=details.seed if details is not None else None,
            tokens=tuple(self.tokens),
        )


def _generation_result(output: Any, *, model_id: str | None, started: float, logprobs: bool) -> InferenceResult:
    """An InferenceResult from a non-streamed `TextGenerationOutput` (asked for with details)."""
    details = output.get("details") if isinstance(output, Mapping) else None
    text = str(output.get("generated_text")) if isinstance(output, Mapping) else str(output)
    tokens: tuple[TokenLogprob, ...] = ()
    if logprobs and details is not None:
        rows = details.get("top_tokens") or []
        tokens = tuple(
            _tgi_token(token, rows[index] if index < len(rows) else None)
            for index, token in enumerate(details.get("tokens") or [])
        )
    return InferenceResult(
        text=text,
        generated_tokens=int(details.get("generated_tokens") or 0) if details is not None else 0,
        # Non-streamed details carry no input length; only `decoder_input_details` (the prompt's tokens
        # and their log-probabilities, costly on a long prompt) would tell.
        prompt_tokens=None,
        finish_reason=normalise_finish_reason(details.get("finish_reason") if details is not None else None),
        model_id=model_id,
        ttft_ms=None,
        latency_ms=elapsed_ms(started),
        seed=details.get("seed") if details is not None else None,
        tokens=tokens,
    )


async def agenerate_stream(
    endpoint: Endpoint,
    request: GenerateRequest,
    *,
    on_token: OnToken,
    model_id: str | None = None,
    retries: int = 0,
    backoff: float = 0.5,
) -> InferenceResult:
    """Generate over TGI's native protocol, streaming tokens to `on_token`.

    `on_token` (a function, or a coroutine function) gets each non-special token's text as it arrives;
    exceptions it raises propagate unchanged. `model_id` (TGI does not name its model in a stream) is
    copied into the result. A retryable failure before any text reached `on_token` is retried up to
    `retries` times, waiting `backoff_delay(n, backoff)` before retry n (with `asyncio.sleep`, so other
    calls on the loop go on meanwhile); a failure after is raised at once. Raises an `InferenceError`
    subclass on any failure.
    """
    arguments = request.hub_arguments(stream=True)
    delivery = Delivery(on_token)
    started = time.perf_counter()

    async def attempt() -> InferenceResult:
        state = _GenerationState(endpoint.base_url, model_id, started, request.wants_logprobs)
        async with endpoint.session() as client:
            try:
                events = await client.text_generation(request.prompt, **arguments)
            except Exception as exc:
                raise endpoint.error(exc) from exc
            stream = aiter(events)
            typed = guarded(stream, endpoint.base_url, endpoint.timeout)
            try:
                async for event in typed:
                    text = state.token(event)
                    if text is not None:
                        await delivery(text)
            finally:
                await aclose(typed, stream)
        return state.result()

    return await with_retries(attempt, retries=retries, backoff=backoff, delivery=delivery)


async def agenerate(
    endpoint: Endpoint,
    request: GenerateRequest,
    *,
    model_id: str | None = None,
    retries: int = 0,
    backoff: float = 0.5,
) -> InferenceResult:
    """`agenerate_stream` without streaming: one request, one reply (TGI native, `details=True`).

    `endpoint.timeout` bounds the wait for the whole reply, so allow for the longest generation expected.
    `result.ttft_ms` is None and `result.prompt_tokens` is None (TGI reports the prompt's length only in
    streams). Every retryable failure is retried, since no part of a reply is ever delivered early.
    """
    arguments = request.hub_arguments(stream=False)
    started = time.perf_counter()

    async def attempt() -> InferenceResult:
        async with endpoint.session() as client:
            try:
                output = await client.text_generation(request.prompt, **arguments)
            except Exception as exc:
                raise endpoint.error(exc) from exc
        return _generation_result(output, model_id=model_id, started=started, logprobs=request.wants_logprobs)

    return await with_retries(attempt, retries=retries, backoff=backoff)
