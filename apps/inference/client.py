"""The one door through which product code calls a model.

Built on huggingface_hub's `InferenceClient` / `AsyncInferenceClient`, which speak TGI, TEI and any
OpenAI-compatible server (vLLM, SGLang, llama.cpp). This module adds what the product needs on top:

- two protocol families, TGI's native generation and OpenAI-compatible chat, each streamed
  (`generate_stream`, `chat_stream`, with a per-token callback) or not (`generate`, `chat`), each with an
  async twin (`a...`), all returning one `InferenceResult`;
- usage (prompt and generated tokens), finish reason, seed, token log-probabilities and tool calls in
  that result, time-to-first-token / latency measured here, and an exact `to_dict` / `from_dict` round
  trip so a call can be recorded and replayed;
- retries with exponential backoff and jitter for failures that may pass (overload, 5xx, dropped
  connections, timeouts), but never once part of the reply has reached the caller;
- the known client traps of TGI and huggingface_hub handled in one place:
  `return_full_text=False` on TGI's `/` route, TGI's `data:[DONE]` chat sentinel that huggingface_hub
  (up to 2.4.0) fails to parse, chat errors that arrive untyped, timeouts that surface as different
  exception types across versions;
- one typed error family (`apps.inference.errors`) with messages a business user can read.

Nothing here needs Django: every call takes the server URL and credentials explicitly. `default_base_url`
reads Django settings only if they are configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
import json
import logging
import math
import os
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx2
from huggingface_hub import AsyncInferenceClient, InferenceClient
from huggingface_hub import errors as hf_errors
from huggingface_hub.utils import get_async_session, get_session, hf_raise_for_status, is_numpy_available
from huggingface_hub.utils._http import async_hf_request_event_hook, async_hf_response_event_hook

from .errors import (
    InferenceAuthenticationError,
    InferenceConnectionError,
    InferenceError,
    InferenceGenerationError,
    InferenceOverloadedError,
    InferenceTimeoutError,
    InferenceUnavailableError,
    InferenceValidationError,
)

__all__ = [
    "MAX_BACKOFF_SECONDS",
    "InferenceAuthenticationError",
    "InferenceConnectionError",
    "InferenceError",
    "InferenceGenerationError",
    "InferenceOverloadedError",
    "InferenceResult",
    "InferenceTimeoutError",
    "InferenceUnavailableError",
    "InferenceValidationError",
    "TokenLogprob",
    "achat",
    "achat_stream",
    "aembed",
    "agenerate",
    "agenerate_stream",
    "backoff_delay",
    "chat",
    "chat_stream",
    "default_base_url",
    "embed",
    "generate",
    "generate_stream",
    "new_async_http_client",
    "redact_url",
    "server_info",
    "translate_error",
]

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "http://127.0.0.1:58080"
# huggingface_hub falls back to a locally stored Hugging Face token when no key is given; a placeholder
# key keeps a developer's personal token from being sent to whatever server an endpoint points at.
_NO_KEY = "-"
# The model names huggingface_hub puts in chat payloads when it has none; TGI echoes them back.
_PLACEHOLDER_MODELS = {"dummy", "tgi", ""}
# The longest wait between two attempts, whatever `backoff` and the attempt number say: beyond this a
# step is better off failing visibly (and being retried by a person or a policy) than sitting silent.
MAX_BACKOFF_SECONDS = 10.0

OnToken = Callable[[str], None]
AsyncOnToken = Callable[[str], "Awaitable[None] | None"]
T = TypeVar("T")


# --------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token, its log-probability and the likeliest alternatives at its position.

    `logprob` is None only when the server sent none. `top` holds `(text, logprob)` pairs as the server
    ranked them, likeliest first (TGI's list includes the chosen token itself). `special` marks tokens
    that add no text, such as TGI's end-of-sequence `</s>`; only TGI's native protocol says which tokens
    are special, so on the chat protocol it is always False, even for the end token TGI reports there.
    """

    text: str
    logprob: float | None
    top: tuple[tuple[str, float | None], ...] = ()
    special: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-native (lists, not tuples), so `to_dict()` equals its own JSON round trip."""
        return {
            "text": self.text,
            "logprob": self.logprob,
            "top": [[text, logprob] for text, logprob in self.top],
            "special": self.special,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TokenLogprob:
        """The inverse of `to_dict`."""
        return cls(
            text=data["text"],
            logprob=data["logprob"],
            top=tuple((text, logprob) for text, logprob in data.get("top", ())),
            special=data.get("special", False),
        )


@dataclass(frozen=True)
class InferenceResult:
    """The outcome of one model call, with the numbers provenance needs.

    `finish_reason` uses one vocabulary for every server: "stop" (the model ended, TGI's `eos_token`),
    "length" (hit max tokens) or "stop_sequence" (TGI: a stop string matched); other values (such as
    OpenAI's "tool_calls") pass through. `prompt_tokens` is None when the server reported no usage.
    `ttft_ms` is the time to the first token event (None if none came, and always None for the
    non-streamed calls, whose reply arrives whole); `latency_ms` the whole call. Both are measured on this
    side of the wire from the start of the call, so they include any failed attempts and the waits
    between them: what the user waited. `model_id` is what the server said it ran (None when it did not
    say). `tokens` is filled only when log-probabilities were asked for; `tool_calls` holds the chat
    protocol's tool calls as `{"id", "name", "arguments"}` with `arguments` parsed from JSON (the raw text
    when it is not valid JSON). `attempts` counts the requests made, 1 when the first succeeded.
    """

    text: str
    generated_tokens: int
    prompt_tokens: int | None
    finish_reason: str
    model_id: str | None
    ttft_ms: float | None
    latency_ms: float
    seed: int | None
    tokens: tuple[TokenLogprob, ...] = ()
    tool_calls: tuple[dict[str, Any], ...] = ()
    attempts: int = 1

    def to_dict(self) -> dict[str, Any]:
        """A JSON-native dict (for Celery results and provenance records); see `from_dict`."""
        values = {item.name: getattr(self, item.name) for item in fields(self)}
        values["tokens"] = [token.to_dict() for token in self.tokens]
        # A copy: the record must not change if a caller later edits the parsed arguments it was given.
        values["tool_calls"] = [copy.deepcopy(call) for call in self.tool_calls]
        return values

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InferenceResult:
        """Rebuild a result from `to_dict()`, also after a JSON round trip: `from_dict(r.to_dict()) == r`
        and `from_dict(d).to_dict() == d`, so a replayed call serialises byte for byte like the recorded
        one. Records made before `tokens`, `tool_calls` and `attempts` existed load with their defaults;
        unknown keys raise ValueError, because a replay that silently dropped part of a record would not
        be the same call."""
        names = {item.name for item in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"Not fields of an InferenceResult: {', '.join(unknown)}")
        values = dict(data)
        values["tokens"] = tuple(TokenLogprob.from_dict(token) for token in data.get("tokens", ()))
        values["tool_calls"] = tuple(copy.deepcopy(dict(call)) for call in data.get("tool_calls", ()))
        return cls(**values)


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


def _status_behind(exc: BaseException) -> int | None:
    # huggingface_hub raises its typed TGI errors `from` the HTTP error when there was a status to see
    # (non-streamed calls); in-band stream errors have none.
    cause = exc.__cause__
    if isinstance(cause, hf_errors.HfHubHTTPError) and cause.response is not None:
        return cause.response.status_code
    return None


def translate_error(exc: BaseException, *, base_url: str, timeout: float | None = None) -> InferenceError:
    """Map whatever huggingface_hub or httpx2 raised onto the typed family, with a readable message."""
    base_url = redact_url(base_url)  # messages reach run pages and the audit chain: no credentials
    if isinstance(exc, InferenceError):
        return exc
    where = f"The inference server at {base_url}"
    patience = f"{timeout:g} seconds" if timeout is not None else "the configured time"
    overloaded = f"{where} is overloaded (too many requests at once); try again shortly."

    # TGI errors that huggingface_hub typed from the `error_type` field (text_generation path).
    if isinstance(exc, hf_errors.ValidationError):
        return InferenceValidationError(
            f"{where} rejected the request: {exc}", base_url=base_url, status_code=422, server_message=str(exc)
        )
    if isinstance(exc, hf_errors.OverloadedError):
        return InferenceOverloadedError(overloaded, base_url=base_url, status_code=429, server_message=str(exc))
    if isinstance(exc, hf_errors.GenerationError | hf_errors.IncompleteGenerationError):
        return InferenceGenerationError(
            f"The model at {base_url} failed while generating: {exc}",
            base_url=base_url,
            status_code=_status_behind(exc),
            server_message=str(exc),
        )
    if isinstance(exc, hf_errors.UnknownError):
        # A chat stream's in-band error: huggingface_hub passes TGI's {"message", "http_status_code"}
        # object through untyped (and TGI always says 422 there), so classify by TGI's message wording.
        # TGI error types huggingface_hub does not know (tool_error, template_error) land here too.
        payload = exc.args[0] if exc.args else None
        message = str(payload.get("message")) if isinstance(payload, dict) else str(exc)
        error_class = _classify_server_message(message)
        if error_class is InferenceOverloadedError:
            text = overloaded
        elif error_class is InferenceValidationError:
            text = f"{where} rejected the request: {message}"
        else:
            text = f"The model at {base_url} failed while generating: {message}"
        return error_class(text, base_url=base_url, status_code=_status_behind(exc), server_message=message)

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
            return InferenceOverloadedError(overloaded, base_url=base_url, status_code=status, server_message=words)
        if status in (502, 503):
            # Said by a server that is starting or restarting, or by a gateway with no healthy backend; the
            # body is often a proxy's HTML page, so it stays in `server_message`, out of the sentence.
            return InferenceUnavailableError(
                f"{where} is unavailable right now (HTTP {status}); try again in a moment.",
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
        # 424 is TGI's own "the backend failed during generation"; other statuses may come from anything
        # between here and the model, so they claim less.
        during = " while generating" if status == 424 else ""
        return InferenceGenerationError(
            f"The model at {base_url} failed{during} (HTTP {status}){detail}",
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


async def _aclose(*iterators: AsyncIterator[Any]) -> None:
    """Close a call's stream generators here, on the loop, when the call ends however it ends (finished,
    failed, cancelled), rather than leaving half-read generators for the garbage collector to finalise
    later, on whatever thread it runs (the response itself is closed with the client)."""
    for iterator in iterators:
        close = getattr(iterator, "aclose", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()


# --------------------------------------------------------------------------------------------------
# Retries


def backoff_delay(retry: int, backoff: float) -> float:
    """Seconds to wait before retry number `retry` (1 for the first): `backoff` doubled per retry, capped
    at MAX_BACKOFF_SECONDS, with its upper half random so that callers failing together (a burst that
    overloaded the server) do not all come back together."""
    ceiling = min(MAX_BACKOFF_SECONDS, backoff * 2.0 ** max(retry - 1, 0))
    # Jitter for spreading load, not secrecy: the standard generator is the right tool.
    return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311


def _check_retry_arguments(retries: int, backoff: float) -> None:
    if retries < 0:
        raise ValueError(f"retries must be 0 or more, not {retries}")
    if backoff < 0:
        raise ValueError(f"backoff must be 0 seconds or more, not {backoff}")


class _Delivery:
    """The caller's on_token, counting the texts it was handed over all attempts of one call."""

    def __init__(self, on_token: Callable[[str], Any] | None) -> None:
        self.on_token = on_token
        self.count = 0

    def __call__(self, text: str) -> Any:
        # Counted before the call: once the callback has started on a text, the caller may have shown it.
        self.count += 1
        return self.on_token(text) if self.on_token is not None else None


def _as_sentence(text: str) -> str:
    text = text.rstrip()
    return text if text.endswith((".", "!", "?")) else text + "."


def _retry_delay(error: InferenceError, *, attempt: int, retries: int, backoff: float, delivered: int) -> float | None:
    """Seconds to wait before the next attempt, or None when `error` is final.

    Part of a reply that reached `on_token` has been streamed to the user; starting over would show it
    twice, or a different reply after it, so such a failure is final whatever its kind.
    """
    if not error.retryable or delivered or attempt > retries:
        return None
    return backoff_delay(attempt, backoff)


def _final(error: InferenceError, *, attempt: int, delivered: int) -> None:
    """Record on `error` how the call ended, in its attributes and in words."""
    error.attempts = attempt
    error.tokens_delivered = delivered
    notes = []
    if delivered:
        notes.append(f"The reply broke off after {delivered} token{'' if delivered == 1 else 's'}.")
    if attempt > 1:
        notes.append(f"Gave up after {attempt} attempts.")
    if notes:
        error.message = " ".join([_as_sentence(error.message), *notes])
        error.args = (error.message,)


def _log_retry(error: InferenceError, attempt: int, retries: int, delay: float) -> None:
    logger.warning(
        "Inference call to %s failed (%s); retry %d of %d in %.2f s",
        error.base_url,
        type(error).__name__,
        attempt,
        retries,
        delay,
    )


def _with_retries(
    attempt: Callable[[], InferenceResult], *, retries: int, backoff: float, delivery: _Delivery
) -> InferenceResult:
    """Run `attempt` until it succeeds or fails for good; the result says how many attempts it took."""
    number = 1
    while True:
        try:
            result = attempt()
        except InferenceError as error:
            delay = _retry_delay(error, attempt=number, retries=retries, backoff=backoff, delivered=delivery.count)
            if delay is None:
                _final(error, attempt=number, delivered=delivery.count)
                raise
            _log_retry(error, number, retries, delay)
            time.sleep(delay)
            number += 1
            continue
        return replace(result, attempts=number)


async def _awith_retries(
    attempt: Callable[[], Awaitable[InferenceResult]], *, retries: int, backoff: float, delivery: _Delivery
) -> InferenceResult:
    """`_with_retries` for coroutines, waiting with `asyncio.sleep` so the loop serves other calls."""
    number = 1
    while True:
        try:
            result = await attempt()
        except InferenceError as error:
            delay = _retry_delay(error, attempt=number, retries=retries, backoff=backoff, delivered=delivery.count)
            if delay is None:
                _final(error, attempt=number, delivered=delivery.count)
                raise
            _log_retry(error, number, retries, delay)
            await asyncio.sleep(delay)
            number += 1
            continue
        return replace(result, attempts=number)


# --------------------------------------------------------------------------------------------------
# Shared plumbing


def new_async_http_client(*, max_connections: int | None = None) -> httpx2.AsyncClient:
    """An HTTP client to share across async calls (`http_client=`); the caller closes it.

    It carries huggingface_hub's own request and response hooks (which read error bodies), but never
    follows redirects (a model server must not be able to send a prompt on to another host), and keeps
    up to `max_connections` connections alive (huggingface_hub's default keeps 20, fewer than the calls a
    worker has in flight, so connections would churn and add to time to first token).
    """
    if max_connections is None:
        client = get_async_session()
        client.follow_redirects = False
        return client
    return httpx2.AsyncClient(
        event_hooks={"request": [async_hf_request_event_hook], "response": [async_hf_response_event_hook]},
        follow_redirects=False,
        timeout=None,
        limits=httpx2.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
    )


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


@dataclass(frozen=True)
class _Endpoint:
    """Where one call goes and how long each network wait may take."""

    base_url: str
    token: str | None
    timeout: float
    http_client: httpx2.AsyncClient | None = None

    def error(self, exc: BaseException) -> InferenceError:
        return translate_error(exc, base_url=self.base_url, timeout=self.timeout)

    def client(self) -> InferenceClient:
        try:
            return InferenceClient(base_url=self.base_url, api_key=self.token or _NO_KEY, timeout=self.timeout)
        except Exception as exc:
            raise self.error(exc) from exc

    def async_client(self) -> AsyncInferenceClient:
        try:
            return _async_inference_client(
                url=self.base_url, token=self.token, timeout=self.timeout, http_client=self.http_client
            )
        except Exception as exc:
            raise self.error(exc) from exc


def _normalise_finish_reason(reason: str | None) -> str:
    if reason is None:
        return ""
    return "stop" if reason == "eos_token" else str(reason)


def _model_from_server(model: str | None) -> str | None:
    return None if model is None or model in _PLACEHOLDER_MODELS else model


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


def _logprob(value: Any) -> float | None:
    # TGI serialises a NaN log-probability (a first prefill token) as null; keep results valid JSON.
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _wants_logprobs(logprobs: bool, top_logprobs: int | None) -> bool:
    return logprobs or bool(top_logprobs)


# --------------------------------------------------------------------------------------------------
# TGI-native generation


def _text_generation_kwargs(
    *,
    stream: bool,
    max_new_tokens: int,
    temperature: float | None,
    seed: int | None,
    stop: Sequence[str] | None,
    grammar: dict[str, Any] | None,
    logprobs: bool,
    top_logprobs: int | None,
) -> dict[str, Any]:
    return {
        "stream": stream,
        # Finish reason, token counts and seed live in the details; stream events carry each token's
        # log-probability either way, non-streamed replies only with details.
        "details": True,
        # TGI's `/` (where huggingface_hub posts) echoes the prompt unless told otherwise.
        "return_full_text": False,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "seed": seed,
        "stop": list(stop) if stop else None,
        "grammar": grammar,
        "top_n_tokens": top_logprobs if logprobs and top_logprobs else None,
    }


def _tgi_token(token: Mapping[str, Any], top: Sequence[Mapping[str, Any]] | None) -> TokenLogprob:
    # huggingface_hub's response types are dicts as well as dataclasses, and it leaves nested lists (TGI's
    # `top_tokens` rows) as plain dicts, so everything is read as a mapping.
    return TokenLogprob(
        text=str(token.get("text")),
        logprob=_logprob(token.get("logprob")),
        top=tuple((str(alt.get("text")), _logprob(alt.get("logprob"))) for alt in top or ()),
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
            self.ttft_ms = _elapsed_ms(self.started)
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
            finish_reason=_normalise_finish_reason(details.finish_reason if details is not None else None),
            model_id=self.model_id,
            ttft_ms=self.ttft_ms,
            latency_ms=_elapsed_ms(self.started),
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
        finish_reason=_normalise_finish_reason(details.get("finish_reason") if details is not None else None),
        model_id=model_id,
        ttft_ms=None,
        latency_ms=_elapsed_ms(started),
        seed=details.get("seed") if details is not None else None,
        tokens=tokens,
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
    logprobs: bool = False,
    top_logprobs: int | None = None,
    retries: int = 0,
    backoff: float = 0.5,
) -> InferenceResult:
    """Generate from a raw prompt over TGI's native protocol, streaming tokens to `on_token`.

    `grammar` is TGI's `{"type": "json" | "regex" | "json_schema", "value": ...}`. `on_token` gets each
    non-special token's text as it arrives; exceptions it raises propagate unchanged. `timeout` bounds each
    network wait (connect, each read), not the whole call. `model_id` (TGI does not name its model in a
    stream) is copied into the result. `logprobs` fills `result.tokens` (special tokens included, marked);
    `top_logprobs` (TGI's `top_n_tokens`, at most 5 by default; implies `logprobs`) adds that many
    alternatives per position. A retryable failure before any text reached `on_token` is retried up to
    `retries` times, waiting `backoff_delay(n, backoff)` before retry n; a failure after is raised at once.
    Raises an `InferenceError` subclass on any failure.
    """
    _check_retry_arguments(retries, backoff)
    want_logprobs = _wants_logprobs(logprobs, top_logprobs)
    kwargs = _text_generation_kwargs(
        stream=True,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        stop=stop,
        grammar=grammar,
        logprobs=want_logprobs,
        top_logprobs=top_logprobs,
    )
    endpoint = _Endpoint(base_url, token, timeout)
    delivery = _Delivery(on_token)
    started = time.perf_counter()

    def attempt() -> InferenceResult:
        state = _GenerationState(base_url, model_id, started, want_logprobs)
        with endpoint.client() as client:
            try:
                events = iter(client.text_generation(prompt, **kwargs))
            except Exception as exc:
                raise endpoint.error(exc) from exc
            for event in _guarded(events, base_url, timeout):
                text = state.token(event)
                if text is not None:
                    delivery(text)
        return state.result()

    return _with_retries(attempt, retries=retries, backoff=backoff, delivery=delivery)


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
    logprobs: bool = False,
    top_logprobs: int | None = None,
    retries: int = 0,
    backoff: float = 0.5,
) -> InferenceResult:
    """`generate_stream` on `AsyncInferenceClient`; `on_token` may be sync or return an awaitable.

    Pass `http_client` (see `new_async_http_client`) to reuse connections across calls. Waits between
    attempts with `asyncio.sleep`, so other calls on the loop go on meanwhile.
    """
    _check_retry_arguments(retries, backoff)
    want_logprobs = _wants_logprobs(logprobs, top_logprobs)
    kwargs = _text_generation_kwargs(
        stream=True,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        stop=stop,
        grammar=grammar,
        logprobs=want_logprobs,
        top_logprobs=top_logprobs,
    )
    endpoint = _Endpoint(base_url, token, timeout, http_client)
    delivery = _Delivery(on_token)
    started = time.perf_counter()

    async def attempt() -> InferenceResult:
        state = _GenerationState(base_url, model_id, started, want_logprobs)
        async with endpoint.async_client() as client:
            try:
                events = await client.text_generation(prompt, **kwargs)
            except Exception as exc:
                raise endpoint.error(exc) from exc
            stream = aiter(events)
            guarded = _aguarded(stream, base_url, timeout)
            try:
                async for event in guarded:
                    text = state.token(event)
                    if text is not None:
                        outcome = delivery(text)
                        if inspect.isawaitable(outcome):
                            await outcome
            finally:
                await _aclose(guarded, stream)
        return state.result()

    return await _awith_retries(attempt, retries=retries, backoff=backoff, delivery=delivery)


def generate(
    *,
    base_url: str,
    prompt: str,
    max_new_tokens: int,
    temperature: float | None = None,
    seed: int | None = None,
    stop: Sequence[str] | None = None,
    grammar: dict[str, Any] | None = None,
    token: str | None = None,
    timeout: float = 60.0,
    model_id: str | None = None,
    logprobs: bool = False,
    top_logprobs: int | None = None,
    retries: int = 0,
    backoff: float = 0.5,
) -> InferenceResult:
    """`generate_stream` without streaming: one request, one reply (TGI native, `details=True`).

    `timeout` bounds the wait for the whole reply, so allow for the longest generation expected.
    `result.ttft_ms` is None and `result.prompt_tokens` is None (TGI reports the prompt's length only in
    streams). Every retryable failure is retried, since no part of a reply is ever delivered early.
    """
    _check_retry_arguments(retries, backoff)
    want_logprobs = _wants_logprobs(logprobs, top_logprobs)
    kwargs = _text_generation_kwargs(
        stream=False,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        stop=stop,
        grammar=grammar,
        logprobs=want_logprobs,
        top_logprobs=top_logprobs,
    )
    endpoint = _Endpoint(base_url, token, timeout)
    started = time.perf_counter()

    def attempt() -> InferenceResult:
        with endpoint.client() as client:
            try:
                output = client.text_generation(prompt, **kwargs)
            except Exception as exc:
                raise endpoint.error(exc) from exc
        return _generation_result(output, model_id=model_id, started=started, logprobs=want_logprobs)

    return _with_retries(attempt, retries=retries, backoff=backoff, delivery=_Delivery(None))


async def agenerate(
    *,
    base_url: str,
    prompt: str,
    max_new_tokens: int,
    temperature: float | None = None,
    seed: int | None = None,
    stop: Sequence[str] | None = None,
    grammar: dict[str, Any] | None = None,
    token: str | None = None,
    timeout: float = 60.0,
    model_id: str | None = None,
    http_client: httpx2.AsyncClient | None = None,
    logprobs: bool = False,
    top_logprobs: int | None = None,
    retries: int = 0,
    backoff: float = 0.5,
) -> InferenceResult:
    """`generate` on `AsyncInferenceClient`; `http_client` as for `agenerate_stream`."""
    _check_retry_arguments(retries, backoff)
    want_logprobs = _wants_logprobs(logprobs, top_logprobs)
    kwargs = _text_generation_kwargs(
        stream=False,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        stop=stop,
        grammar=grammar,
        logprobs=want_logprobs,
        top_logprobs=top_logprobs,
    )
    endpoint = _Endpoint(base_url, token, timeout, http_client)
    started = time.perf_counter()

    async def attempt() -> InferenceResult:
        async with endpoint.async_client() as client:
            try:
                output = await client.text_generation(prompt, **kwargs)
            except Exception as exc:
                raise endpoint.error(exc) from exc
        return _generation_result(output, model_id=model_id, started=started, logprobs=want_logprobs)

    return await _awith_retries(attempt, retries=retries, backoff=backoff, delivery=_Delivery(None))


# --------------------------------------------------------------------------------------------------
# OpenAI-compatible chat


def _chat_kwargs(
    *,
    stream: bool,
    max_tokens: int,
    temperature: float | None,
    seed: int | None,
    response_format: dict[str, Any] | None,
    model: str | None,
    stop: Sequence[str] | None,
    tools: Sequence[dict[str, Any]] | None,
    tool_choice: str | dict[str, Any] | None,
    logprobs: bool,
    top_logprobs: int | None,
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "stream": stream,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "seed": seed,
        "response_format": response_format,
        "model": model,
        "stop": list(stop) if stop else None,
        "tools": list(tools) if tools else None,
        "tool_choice": tool_choice,
        # OpenAI's protocol refuses top_logprobs without logprobs; huggingface_hub drops the None values.
        "logprobs": True if logprobs else None,
        "top_logprobs": top_logprobs if logprobs and top_logprobs else None,
    }
    if stream:
        # Without usage in the stream there is no token count to bill or record.
        kwargs["stream_options"] = {"include_usage": True}
    return kwargs


def _chat_token(entry: Mapping[str, Any]) -> TokenLogprob:
    return TokenLogprob(
        text=str(entry.get("token")),
        logprob=_logprob(entry.get("logprob")),
        top=tuple((str(alt.get("token")), _logprob(alt.get("logprob"))) for alt in entry.get("top_logprobs") or ()),
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
                self.ttft_ms = _elapsed_ms(self.started)
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
            finish_reason=_normalise_finish_reason(self.finish_reason),
            model_id=_model_from_server(self.model),
            ttft_ms=self.ttft_ms,
            latency_ms=_elapsed_ms(self.started),
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
        finish_reason=_normalise_finish_reason(choice.get("finish_reason")),
        model_id=_model_from_server(output.get("model")),
        ttft_ms=None,
        latency_ms=_elapsed_ms(started),
        seed=seed,
        tokens=tuple(_chat_tokens(choice.get("logprobs"))) if logprobs else (),
        tool_calls=tool_calls,
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
    stop: Sequence[str] | None = None,
    tools: Sequence[dict[str, Any]] | None = None,
    tool_choice: str | dict[str, Any] | None = None,
    logprobs: bool = False,
    top_logprobs: int | None = None,
    retries: int = 0,
    backoff: float = 0.5,
) -> InferenceResult:
    """Chat over the OpenAI-compatible `/v1/chat/completions`, streaming content to `on_token`.

    Works against TGI, vLLM, SGLang and llama.cpp. `response_format` is passed through (TGI's
    `{"type": "json_object" | "regex", "value": ...}` or OpenAI's json_schema form, which huggingface_hub
    rewrites for TGI). `model` is the payload's model name (vLLM needs the served name; TGI ignores it).
    `stop` ends the reply at any of the strings. `tools` are OpenAI function tools
    (`{"type": "function", "function": {"name", "description", "parameters"}}`) and `tool_choice` is
    "auto", "none", "required" or `{"type": "function", "function": {"name": ...}}`; the calls the model
    makes land in `result.tool_calls` and their argument fragments are not passed to `on_token`. TGI
    refuses `tools` together with `response_format`. `logprobs` / `top_logprobs` (implies `logprobs`)
    fill `result.tokens`. Ends at the usage chunk that follows the finish, so TGI's unparseable
    `data:[DONE]` is never read; a JSONDecodeError after a finish is taken as the end, before one as a
    broken stream. `seed` in the result is the requested seed (chat streams do not report one). Retries
    as `generate_stream` does. Raises an `InferenceError` subclass.
    """
    _check_retry_arguments(retries, backoff)
    want_logprobs = _wants_logprobs(logprobs, top_logprobs)
    kwargs = _chat_kwargs(
        stream=True,
        max_tokens=max_tokens,
        temperature=temperature,
        seed=seed,
        response_format=response_format,
        model=model,
        stop=stop,
        tools=tools,
        tool_choice=tool_choice,
        logprobs=want_logprobs,
        top_logprobs=top_logprobs,
    )
    endpoint = _Endpoint(base_url, token, timeout)
    delivery = _Delivery(on_token)
    started = time.perf_counter()

    def attempt() -> InferenceResult:
        state = _ChatState(base_url, started, want_logprobs)
        with endpoint.client() as client:
            try:
                chunks = iter(client.chat_completion(messages, **kwargs))
            except Exception as exc:
                raise endpoint.error(exc) from exc
            while not state.done:
                try:
                    chunk = next(chunks)
                except StopIteration:
                    break
                except Exception as exc:
                    if state.end_of_stream_error(exc):
                        break
                    raise endpoint.error(exc) from exc
                for text in state.chunk(chunk):
                    delivery(text)
        return state.result(seed)

    return _with_retries(attempt, retries=retries, backoff=backoff, delivery=delivery)


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
    stop: Sequence[str] | None = None,
    tools: Sequence[dict[str, Any]] | None = None,
    tool_choice: str | dict[str, Any] | None = None,
    logprobs: bool = False,
    top_logprobs: int | None = None,
    retries: int = 0,
    backoff: float = 0.5,
) -> InferenceResult:
    """`chat_stream` on `AsyncInferenceClient`; `on_token` may be sync or return an awaitable.

    Pass `http_client` (see `new_async_http_client`) to reuse connections across calls.
    """
    _check_retry_arguments(retries, backoff)
    want_logprobs = _wants_logprobs(logprobs, top_logprobs)
    kwargs = _chat_kwargs(
        stream=True,
        max_tokens=max_tokens,
        temperature=temperature,
        seed=seed,
        response_format=response_format,
        model=model,
        stop=stop,
        tools=tools,
        tool_choice=tool_choice,
        logprobs=want_logprobs,
        top_logprobs=top_logprobs,
    )
    endpoint = _Endpoint(base_url, token, timeout, http_client)
    delivery = _Delivery(on_token)
    started = time.perf_counter()

    async def attempt() -> InferenceResult:
        state = _ChatState(base_url, started, want_logprobs)
        async with endpoint.async_client() as client:
            try:
                chunks = aiter(await client.chat_completion(messages, **kwargs))
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
                        outcome = delivery(text)
                        if inspect.isawaitable(outcome):
                            await outcome
            finally:
                await _aclose(chunks)
        return state.result(seed)

    return await _awith_retries(attempt, retries=retries, backoff=backoff, delivery=delivery)


def chat(
    *,
    base_url: str,
    messages: list[dict[str, Any]],
    max_tokens: int,
    temperature: float | None = None,
    seed: int | None = None,
    response_format: dict[str, Any] | None = None,
    token: str | None = None,
    timeout: float = 60.0,
    model: str | None = None,
    stop: Sequence[str] | None = None,
    tools: Sequence[dict[str, Any]] | None = None,
    tool_choice: str | dict[str, Any] | None = None,
    logprobs: bool = False,
    top_logprobs: int | None = None,
    retries: int = 0,
    backoff: float = 0.5,
) -> InferenceResult:
    """`chat_stream` without streaming (`stream=False`): one request, one reply.

    `timeout` bounds the wait for the whole reply; `result.ttft_ms` is None. Every retryable failure is
    retried, since no part of a reply is ever delivered early.
    """
    _check_retry_arguments(retries, backoff)
    want_logprobs = _wants_logprobs(logprobs, top_logprobs)
    kwargs = _chat_kwargs(
        stream=False,
        max_tokens=max_tokens,
        temperature=temperature,
        seed=seed,
        response_format=response_format,
        model=model,
        stop=stop,
        tools=tools,
        tool_choice=tool_choice,
        logprobs=want_logprobs,
        top_logprobs=top_logprobs,
    )
    endpoint = _Endpoint(base_url, token, timeout)
    started = time.perf_counter()

    def attempt() -> InferenceResult:
        with endpoint.client() as client:
            try:
                output = client.chat_completion(messages, **kwargs)
            except Exception as exc:
                raise endpoint.error(exc) from exc
        return _chat_result(output, base_url=base_url, started=started, logprobs=want_logprobs, seed=seed)

    return _with_retries(attempt, retries=retries, backoff=backoff, delivery=_Delivery(None))


async def achat(
    *,
    base_url: str,
    messages: list[dict[str, Any]],
    max_tokens: int,
    temperature: float | None = None,
    seed: int | None = None,
    response_format: dict[str, Any] | None = None,
    token: str | None = None,
    timeout: float = 60.0,
    model: str | None = None,
    http_client: httpx2.AsyncClient | None = None,
    stop: Sequence[str] | None = None,
    tools: Sequence[dict[str, Any]] | None = None,
    tool_choice: str | dict[str, Any] | None = None,
    logprobs: bool = False,
    top_logprobs: int | None = None,
    retries: int = 0,
    backoff: float = 0.5,
) -> InferenceResult:
    """`chat` on `AsyncInferenceClient`; `http_client` as for `achat_stream`."""
    _check_retry_arguments(retries, backoff)
    want_logprobs = _wants_logprobs(logprobs, top_logprobs)
    kwargs = _chat_kwargs(
        stream=False,
        max_tokens=max_tokens,
        temperature=temperature,
        seed=seed,
        response_format=response_format,
        model=model,
        stop=stop,
        tools=tools,
        tool_choice=tool_choice,
        logprobs=want_logprobs,
        top_logprobs=top_logprobs,
    )
    endpoint = _Endpoint(base_url, token, timeout, http_client)
    started = time.perf_counter()

    async def attempt() -> InferenceResult:
        async with endpoint.async_client() as client:
            try:
                output = await client.chat_completion(messages, **kwargs)
            except Exception as exc:
                raise endpoint.error(exc) from exc
        return _chat_result(output, base_url=base_url, started=started, logprobs=want_logprobs, seed=seed)

    return await _awith_retries(attempt, retries=retries, backoff=backoff, delivery=_Delivery(None))


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
