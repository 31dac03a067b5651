"""The one door through which product code calls a model.

Built on huggingface_hub's `InferenceClient` / `AsyncInferenceClient`, which speak TGI, TEI and any
OpenAI-compatible server (vLLM, SGLang, llama.cpp). This module adds what the product needs on top:

- streaming always, with a per-token callback and time-to-first-token / latency measured here;
- usage (prompt and generated tokens), finish reason and seed in one `InferenceResult`;
- the known client traps of TGI and huggingface_hub handled in one place:
  `return_full_text=False` on TGI's `/` route, TGI's `data:[DONE]` chat sentinel that huggingface_hub
  (up to 2.4.0) fails to parse, chat errors that arrive untyped, timeouts that surface as different
  exception types across versions;
- one typed error family (`apps.inference.errors`) with messages a business user can read.

Nothing here needs Django: every call takes the server URL and credentials explicitly. `default_base_url`
reads Django settings only if they are configured.
"""

from __future__ import annotations

import inspect
import json
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx2
from huggingface_hub import AsyncInferenceClient, InferenceClient
from huggingface_hub import errors as hf_errors
from huggingface_hub.utils import get_async_session, get_session, hf_raise_for_status, is_numpy_available

from .errors import (
    InferenceAuthenticationError,
    InferenceConnectionError,
    InferenceError,
    InferenceGenerationError,
    InferenceOverloadedError,
    InferenceTimeoutError,
    InferenceValidationError,
)

__all__ = [
    "InferenceAuthenticationError",
    "InferenceConnectionError",
    "InferenceError",
    "InferenceGenerationError",
    "InferenceOverloadedError",
    "InferenceResult",
    "InferenceTimeoutError",
    "InferenceValidationError",
    "achat_stream",
    "aembed",
    "agenerate_stream",
    "chat_stream",
    "default_base_url",
    "embed",
    "generate_stream",
    "new_async_http_client",
    "redact_url",
    "server_info",
    "translate_error",
]

DEFAULT_BASE_URL = "http://127.0.0.1:58080"
# huggingface_hub falls back to a locally stored Hugging Face token when no key is given; a placeholder
# key keeps a developer's personal token from being sent to whatever server an endpoint points at.
_NO_KEY = "-"
# The model names huggingface_hub puts in chat payloads when it has none; TGI echoes them back.
_PLACEHOLDER_MODELS = {"dummy", "tgi", ""}

OnToken = Callable[[str], None]
AsyncOnToken = Callable[[str], "Awaitable[None] | None"]
T = TypeVar("T")


@dataclass(frozen=True)
class InferenceResult:
    """The outcome of one model call, with the numbers provenance needs.

    `finish_reason` uses one vocabulary for every server: "stop" (the model ended, TGI's `eos_token`),
    "length" (hit max tokens) or "stop_sequence" (TGI: a stop string matched); other values pass through.
    `prompt_tokens` is None when the server reported no usage. `ttft_ms` is the time to the first token
    event (None if none came); `latency_ms` the whole call; both measured on this side of the wire.
    `model_id` is what the server said it ran (None when it did not say).
    """

    text: str
    generated_tokens: int
    prompt_tokens: int | None
    finish_reason: str
    model_id: str | None
    ttft_ms: float | None
    latency_ms: float
    seed: int | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (for Celery results and provenance records)."""
        return asdict(self)


def redact_url(url: str) -> str:
    """`url` without credentials, query or fragment: what may be shown, logged and audited."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def default_base_url() -> str:
    """The configured inference server: Django's `AIOS_INFERENCE_URL` if settings are loaded, else the
    `AIOS_INFERENCE_URL` environment variable, else the development server's default address."""
    try:
        from django.conf import settings

        if settings.configured:
            configured = getattr(settings, "AIOS_INFERENCE_URL", None)
            if configured:
                return str(configured)
    except ImportError:  # pragma: no cover - Django is always installed with the product
        pass
    return os.environ.get("AIOS_INFERENCE_URL") or DEFAULT_BASE_URL


# --------------------------------------------------------------------------------------------------
# Error translation


def _reason_for_connect_error(exc: BaseException) -> str:
    # The root cause sits at different depths: the sync transport words it in the top message, the
    # async one (anyio) says "All connection attempts failed" and chains the socket error underneath.
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionRefusedError):
            return "connection refused"
        if isinstance(current, socket.gaierror):
            return "the host name could not be resolved"
        text = str(current).lower()
        if "refused" in text:
            return "connection refused"
        if "name or service not known" in text or "nodename nor servname" in text or "getaddrinfo" in text:
            return "the host name could not be resolved"
        if "unreachable" in text:
            return "network unreachable"
        if "reset" in text:
            return "connection reset"
        current = current.__cause__ or current.__context__
    return "connection failed"


def _server_words(exc: hf_errors.HfHubHTTPError) -> str | None:
    if exc.server_message:
        return exc.server_message.strip()
    try:
        text = exc.response.text.strip()
    except (httpx2.ResponseNotRead, httpx2.StreamError, AttributeError):
        return None
    return text or None


def _classify_server_message(message: str) -> type[InferenceError]:
    lowered = message.lower()
    if "overloaded" in lowered:
        return InferenceOverloadedError
    if (
        lowered.startswith("input validation error")
        or lowered.startswith("template error")
        or lowered.startswith("tool error")
    ):
        return InferenceValidationError
    return InferenceGenerationError


def translate_error(exc: BaseException, *, base_url: str, timeout: float | None = None) -> InferenceError:
    """Map whatever huggingface_hub or httpx2 raised onto the typed family, with a readable message."""
    base_url = redact_url(base_url)  # messages reach run pages and the audit chain: no credentials
    if isinstance(exc, InferenceError):
        return exc
    where = f"The inference server at {base_url}"
    patience = f"{timeout:g} seconds" if timeout is not None else "the configured time"

    # TGI errors that huggingface_hub typed from the `error_type` field (text_generation path).
    if isinstance(exc, hf_errors.ValidationError):
        return InferenceValidationError(
            f"{where} rejected the request: {exc}", base_url=base_url, status_code=422, server_message=str(exc)
        )
    if isinstance(exc, hf_errors.OverloadedError):
        return InferenceOverloadedError(
            f"{where} is overloaded (too many requests at once); try again shortly.",
            base_url=base_url,
            status_code=429,
            server_message=str(exc),
        )
    if isinstance(exc, hf_errors.GenerationError | hf_errors.IncompleteGenerationError):
        return InferenceGenerationError(
            f"The model at {base_url} failed while generating: {exc}", base_url=base_url, server_message=str(exc)
        )
    if isinstance(exc, hf_errors.UnknownError):
        # A chat stream's in-band error: huggingface_hub passes TGI's {"message", "http_status_code"}
        # object through untyped, so classify by TGI's message wording.
        payload = exc.args[0] if exc.args else None
        message = str(payload.get("message")) if isinstance(payload, dict) else str(exc)
        error_class = _classify_server_message(message)
        if error_class is InferenceOverloadedError:
            text = f"{where} is overloaded (too many requests at once); try again shortly."
        elif error_class is InferenceValidationError:
            text = f"{where} rejected the request: {message}"
        else:
            text = f"The model at {base_url} failed while generating: {message}"
        return error_class(text, base_url=base_url, server_message=message)

    if isinstance(exc, hf_errors.InferenceTimeoutError):
        cause = exc.__cause__
        if isinstance(cause, httpx2.ConnectTimeout):
            return InferenceConnectionError(f"{where} is not reachable (connection timed out).", base_url=base_url)
        return InferenceTimeoutError(f"{where} did not respond within {patience}.", base_url=base_url)

    if isinstance(exc, hf_errors.HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else None
        words = _server_words(exc)
        detail = f": {words}" if words else ""
        if status in (400, 413, 415, 422):
            return InferenceValidationError(
                f"{where} rejected the request (HTTP {status}){detail}",
                base_url=base_url,
                status_code=status,
                server_message=words,
            )
        if status in (401, 403):
            return InferenceAuthenticationError(
                f"{where} refused the credentials (HTTP {status}); check the endpoint's API key.",
                base_url=base_url,
                status_code=status,
                server_message=words,
            )
        if status == 404:
            return InferenceError(
                f"{where} has no such route (HTTP 404); check the endpoint URL and server kind.",
                base_url=base_url,
                status_code=status,
                server_message=words,
            )
        if status == 429:
            return InferenceOverloadedError(
                f"{where} is overloaded (too many requests at once); try again shortly.",
                base_url=base_url,
                status_code=status,
                server_message=words,
            )
        if status == 503:
            return InferenceOverloadedError(
                f"{where} is temporarily unavailable (HTTP 503){detail}",
                base_url=base_url,
                status_code=status,
                server_message=words,
            )
        if status == 504:
            return InferenceTimeoutError(
                f"{where} timed out behind a gateway (HTTP 504).",
                base_url=base_url,
                status_code=status,
                server_message=words,
            )
        return InferenceGenerationError(
            f"The model at {base_url} failed (HTTP {status}){detail}",
            base_url=base_url,
            status_code=status,
            server_message=words,
        )

    # Raw transport errors: huggingface_hub lets these through (connect errors always; read timeouts
    # while iterating a stream, and in versions before 2.3 for every call).
    if isinstance(exc, httpx2.ConnectTimeout):
        return InferenceConnectionError(f"{where} is not reachable (connection timed out).", base_url=base_url)
    if isinstance(exc, httpx2.TimeoutException):
        return InferenceTimeoutError(f"{where} did not respond within {patience}.", base_url=base_url)
    if isinstance(exc, httpx2.ConnectError):
        return InferenceConnectionError(
            f"{where} is not reachable ({_reason_for_connect_error(exc)}).", base_url=base_url
        )
    if isinstance(exc, httpx2.RemoteProtocolError | httpx2.ReadError | httpx2.WriteError):
        return InferenceConnectionError(
            f"{where} closed the connection before the reply was complete.", base_url=base_url
        )
    if isinstance(exc, httpx2.TransportError):
        return InferenceConnectionError(f"{where} could not be reached ({type(exc).__name__}).", base_url=base_url)
    if isinstance(exc, json.JSONDecodeError):
        return InferenceGenerationError(
            f"{where} sent an unreadable reply before the generation finished.", base_url=base_url
        )
    if isinstance(exc, ConnectionError):
        return InferenceConnectionError(f"{where} is not reachable ({exc}).", base_url=base_url)
    return InferenceError(
        f"Calling the inference server at {base_url} failed: {type(exc).__name__}: {exc}", base_url=base_url
    )


def _guarded(iterator: Iterator[T], base_url: str, timeout: float) -> Iterator[T]:
    """Re-raise the client's errors as typed ones, without wrapping the caller's own callbacks."""
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except Exception as exc:
            raise translate_error(exc, base_url=base_url, timeout=timeout) from exc
        yield item


async def _aguarded(iterator: AsyncIterator[T], base_url: str, timeout: float) -> AsyncIterator[T]:
    while True:
        try:
            item = await iterator.__anext__()
        except StopAsyncIteration:
            return
        except Exception as exc:
            raise translate_error(exc, base_url=base_url, timeout=timeout) from exc
        yield item


def new_async_http_client() -> httpx2.AsyncClient:
    """An HTTP client to share across async calls (`http_client=`); the caller closes it.

    Built by huggingface_hub's own factory, so it has the transport settings huggingface_hub would use.
    """
    return get_async_session()


def _async_inference_client(
    *, url: str, token: str | None, timeout: float, http_client: httpx2.AsyncClient | None
) -> AsyncInferenceClient:
    client = AsyncInferenceClient(model=url, api_key=token or _NO_KEY, timeout=timeout)
    if http_client is not None:
        # AsyncInferenceClient builds a fresh httpx2.AsyncClient per instance (about 20 ms here, mostly the
        # TLS context), which would dominate time to first token. Hand it the caller's client instead; the
        # per-call AsyncInferenceClient still owns, and closes, the responses it streams.
        client._async_client = http_client
    return client


def _normalise_finish_reason(reason: str | None) -> str:
    if reason is None:
        return ""
    return "stop" if reason == "eos_token" else str(reason)


def _model_from_server(model: str | None) -> str | None:
    return None if model is None or model in _PLACEHOLDER_MODELS else model


# --------------------------------------------------------------------------------------------------
# TGI-native streaming generation


def _text_generation_kwargs(
    max_new_tokens: int,
    temperature: float | None,
    seed: int | None,
    stop: Sequence[str] | None,
    grammar: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "stream": True,
        "details": True,
        # TGI's `/` (where huggingface_hub posts) echoes the prompt unless told otherwise.
        "return_full_text": False,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "seed": seed,
        "stop": list(stop) if stop else None,
        "grammar": grammar,
    }


class _GenerationState:
    """Accumulates a TGI token stream into an InferenceResult."""

    def __init__(self, base_url: str, model_id: str | None) -> None:
        self.base_url = redact_url(base_url)
        self.model_id = model_id
        self.started = time.perf_counter()
        self.ttft_ms: float | None = None
        self.parts: list[str] = []
        self.final: Any = None

    def token(self, event: Any) -> str | None:
        """Record one stream event; returns the text to hand to on_token, if any."""
        if self.ttft_ms is None:
            self.ttft_ms = (time.perf_counter() - self.started) * 1000.0
        if event.details is not None or event.generated_text is not None:
            self.final = event
        token = event.token
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
            finish_reason=_normalise_finish_reason(details.finish_reason if details is not None else None),
            model_id=self.model_id,
            ttft_ms=self.ttft_ms,
            latency_ms=(time.perf_counter() - self.started) * 1000.0,
            seed=details.seed if details is not None else None,
        )


def generate_stream(
    *,
    base_url: str,
    prompt: str,
    max_new_tokens: int,
    on_token: OnToken,
    temperature: float | None = None,
    seed: int | None = None,
    stop: Sequence[str] | None = None,
    grammar: dict[str, Any] | None = None,
    token: str | None = None,
    timeout: float = 60.0,
    model_id: str | None = None,
) -> InferenceResult:
    """Generate from a raw prompt over TGI's native protocol, streaming tokens to `on_token`.

    `grammar` is TGI's `{"type": "json" | "regex" | "json_schema", "value": ...}`. `on_token` gets each
    non-special token's text as it arrives; exceptions it raises propagate unchanged. `timeout` bounds each
    network wait (connect, each read), not the whole call. `model_id` (TGI does not name its model in a
    stream) is copied into the result. Raises an `InferenceError` subclass on any failure.
    """
    state = _GenerationState(base_url, model_id)
    kwargs = _text_generation_kwargs(max_new_tokens, temperature, seed, stop, grammar)
    try:
        client = InferenceClient(base_url=base_url, api_key=token or _NO_KEY, timeout=timeout)
    except Exception as exc:
        raise translate_error(exc, base_url=base_url, timeout=timeout) from exc
    with client:
        try:
            events = iter(client.text_generation(prompt, **kwargs))
        except Exception as exc:
            raise translate_error(exc, base_url=base_url, timeout=timeout) from exc
        for event in _guarded(events, base_url, timeout):
            text = state.token(event)
            if text is not None:
                on_token(text)
    return state.result()


async def agenerate_stream(
    *,
    base_url: str,
    prompt: str,
    max_new_tokens: int,
    on_token: AsyncOnToken,
    temperature: float | None = None,
    seed: int | None = None,
    stop: Sequence[str] | None = None,
    grammar: dict[str, Any] | None = None,
    token: str | None = None,
    timeout: float = 60.0,
    model_id: str | None = None,
    http_client: httpx2.AsyncClient | None = None,
) -> InferenceResult:
    """`generate_stream` on `AsyncInferenceClient`; `on_token` may be sync or return an awaitable.

    Pass `http_client` (see `new_async_http_client`) to reuse connections across calls.
    """
    state = _GenerationState(base_url, model_id)
    kwargs = _text_generation_kwargs(max_new_tokens, temperature, seed, stop, grammar)
    async with _async_inference_client(url=base_url, token=token, timeout=timeout, http_client=http_client) as client:
        try:
            events = await client.text_generation(prompt, **kwargs)
        except Exception as exc:
            raise translate_error(exc, base_url=base_url, timeout=timeout) from exc
        async for event in _aguarded(aiter(events), base_url, timeout):
            text = state.token(event)
            if text is not None:
                outcome = on_token(text)
                if inspect.isawaitable(outcome):
                    await outcome
    return state.result()


# --------------------------------------------------------------------------------------------------
# OpenAI-compatible streaming chat


def _chat_kwargs(
    max_tokens: int,
    temperature: float | None,
    seed: int | None,
    response_format: dict[str, Any] | None,
    model: str | None,
) -> dict[str, Any]:
    return {
        "stream": True,
        # Without usage in the stream there is no token count to bill or record.
        "stream_options": {"include_usage": True},
        "max_tokens": max_tokens,
        "temperature": temperature,
        "seed": seed,
        "response_format": response_format,
        "model": model,
    }


class _ChatState:
    """Accumulates chat chunks; knows when the stream is over even if the sentinel is unreadable."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.started = time.perf_counter()
        self.ttft_ms: float | None = None
        self.parts: list[str] = []
        self.finish_reason: str | None = None
        self.usage: Any = None
        self.model: str | None = None
        self.chunks = 0

    def chunk(self, chunk: Any) -> list[str]:
        """Record one chunk; returns the texts to hand to on_token."""
        texts: list[str] = []
        self.model = chunk.model or self.model
        if chunk.usage is not None:
            self.usage = chunk.usage
        for choice in chunk.choices or []:
            if self.ttft_ms is None:
                self.ttft_ms = (time.perf_counter() - self.started) * 1000.0
            self.chunks += 1
            content = choice.delta.content if choice.delta is not None else None
            if content:
                self.parts.append(content)
                texts.append(content)
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

    def result(self) -> InferenceResult:
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
            finish_reason=_normalise_finish_reason(self.finish_reason),
            model_id=_model_from_server(self.model),
            ttft_ms=self.ttft_ms,
            latency_ms=(time.perf_counter() - self.started) * 1000.0,
            seed=None,
        )


def chat_stream(
    *,
    base_url: str,
    messages: list[dict[str, Any]],
    max_tokens: int,
    on_token: OnToken,
    temperature: float | None = None,
    seed: int | None = None,
    response_format: dict[str, Any] | None = None,
    token: str | None = None,
    timeout: float = 60.0,
    model: str | None = None,
) -> InferenceResult:
    """Chat over the OpenAI-compatible `/v1/chat/completions`, streaming content to `on_token`.

    Works against TGI, vLLM, SGLang and llama.cpp. `response_format` is passed through (TGI's
    `{"type": "json_object", "value": schema}` or OpenAI's json_schema form, which huggingface_hub
    rewrites for TGI). `model` is the payload's model name (vLLM needs the served name; TGI ignores it).
    Ends at the usage chunk that follows the finish, so TGI's unparseable `data:[DONE]` is never read;
    a JSONDecodeError after a finish is taken as the end, before one as a broken stream. `seed` in the
    result is the requested seed (chat streams do not report one). Raises an `InferenceError` subclass.
    """
    state = _ChatState(base_url)
    kwargs = _chat_kwargs(max_tokens, temperature, seed, response_format, model)
    with InferenceClient(base_url=base_url, api_key=token or _NO_KEY, timeout=timeout) as client:
        try:
            chunks = iter(client.chat_completion(messages, **kwargs))
        except Exception as exc:
            raise translate_error(exc, base_url=base_url, timeout=timeout) from exc
        while not state.done:
            try:
                chunk = next(chunks)
            except StopIteration:
                break
            except Exception as exc:
                if state.end_of_stream_error(exc):
                    break
                raise translate_error(exc, base_url=base_url, timeout=timeout) from exc
            for text in state.chunk(chunk):
                on_token(text)
    result = state.result()
    return result if seed is None else _with_seed(result, seed)


async def achat_stream(
    *,
    base_url: str,
    messages: list[dict[str, Any]],
    max_tokens: int,
    on_token: AsyncOnToken,
    temperature: float | None = None,
    seed: int | None = None,
    response_format: dict[str, Any] | None = None,
    token: str | None = None,
    timeout: float = 60.0,
    model: str | None = None,
    http_client: httpx2.AsyncClient | None = None,
) -> InferenceResult:
    """`chat_stream` on `AsyncInferenceClient`; `on_token` may be sync or return an awaitable.

    Pass `http_client` (see `new_async_http_client`) to reuse connections across calls.
    """
    state = _ChatState(base_url)
    kwargs = _chat_kwargs(max_tokens, temperature, seed, response_format, model)
    async with _async_inference_client(url=base_url, token=token, timeout=timeout, http_client=http_client) as client:
        try:
            chunks = aiter(await client.chat_completion(messages, **kwargs))
        except Exception as exc:
            raise translate_error(exc, base_url=base_url, timeout=timeout) from exc
        while not state.done:
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                break
            except Exception as exc:
                if state.end_of_stream_error(exc):
                    break
                raise translate_error(exc, base_url=base_url, timeout=timeout) from exc
            for text in state.chunk(chunk):
                outcome = on_token(text)
                if inspect.isawaitable(outcome):
                    await outcome
    result = state.result()
    return result if seed is None else _with_seed(result, seed)


def _with_seed(result: InferenceResult, seed: int) -> InferenceResult:
    return InferenceResult(**{**result.to_dict(), "seed": seed})


# --------------------------------------------------------------------------------------------------
# Server info and embeddings


def _auth_headers(token: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"} if token else {}


def server_info(base_url: str, token: str | None = None, timeout: float = 5) -> dict[str, Any]:
    """`GET /info`: model id, revision, limits and server version (TGI's `Info` or TEI's).

    Uses huggingface_hub's shared HTTP session directly: its `get_endpoint_info` needs
    `provider="hf-inference"` and takes no timeout.
    """
    url = base_url.rstrip("/") + "/info"
    try:
        response = get_session().get(url, headers=_auth_headers(token), timeout=timeout)
        hf_raise_for_status(response)
        info = response.json()
    except Exception as exc:
        raise translate_error(exc, base_url=base_url, timeout=timeout) from exc
    if not isinstance(info, dict):
        raise InferenceError(
            f"The inference server at {base_url} returned an unexpected /info reply.", base_url=base_url
        )
    return info


def _embed_url(base_url: str) -> str:
    # TEI's native route. Its `POST /` would also embed, but on the development server (and any TGI)
    # `/` is text generation, so always address `/embed`.
    base = base_url.rstrip("/")
    return base if base.endswith("/embed") else base + "/embed"


def _as_rows(value: Any) -> list[list[float]]:
    rows = value.tolist() if hasattr(value, "tolist") else value
    if rows and not isinstance(rows[0], list):
        rows = [rows]
    return [[float(x) for x in row] for row in rows]


def embed(
    base_url: str,
    texts: Sequence[str],
    *,
    token: str | None = None,
    timeout: float = 30.0,
    normalize: bool = True,
) -> list[list[float]]:
    """Embed `texts` on a TEI-compatible server: one vector per text, in order.

    Goes through `InferenceClient.feature_extraction`, which needs numpy for its result; without numpy the
    same request is sent over huggingface_hub's HTTP session. Raises an `InferenceError` subclass.
    """
    if not texts:
        return []
    url = _embed_url(base_url)
    try:
        if is_numpy_available():
            with InferenceClient(model=url, api_key=token or _NO_KEY, timeout=timeout) as client:
                return _as_rows(client.feature_extraction(list(texts), normalize=normalize))
        response = get_session().post(
            url, json={"inputs": list(texts), "normalize": normalize}, headers=_auth_headers(token), timeout=timeout
        )
        hf_raise_for_status(response)
        return _as_rows(response.json())
    except Exception as exc:
        raise translate_error(exc, base_url=base_url, timeout=timeout) from exc


async def aembed(
    base_url: str,
    texts: Sequence[str],
    *,
    token: str | None = None,
    timeout: float = 30.0,
    normalize: bool = True,
    http_client: httpx2.AsyncClient | None = None,
) -> list[list[float]]:
    """`embed` on `AsyncInferenceClient`; `http_client` as for `achat_stream`."""
    if not texts:
        return []
    url = _embed_url(base_url)
    try:
        if is_numpy_available():
            async with _async_inference_client(
                url=url, token=token, timeout=timeout, http_client=http_client
            ) as client:
                return _as_rows(await client.feature_extraction(list(texts), normalize=normalize))
        payload = {"inputs": list(texts), "normalize": normalize}
        if http_client is not None:
            response = await http_client.post(url, json=payload, headers=_auth_headers(token), timeout=timeout)
        else:
            async with get_async_session() as http:
                response = await http.post(url, json=payload, headers=_auth_headers(token), timeout=timeout)
        hf_raise_for_status(response)
        return _as_rows(response.json())
    except Exception as exc:
        raise translate_error(exc, base_url=base_url, timeout=timeout) from exc
