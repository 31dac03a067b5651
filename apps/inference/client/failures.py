"""How a failed call is told: whatever huggingface_hub or httpx2 raised, mapped onto one typed family
(`apps.inference.errors`) with a sentence a business user can act on, and never a credential in it.

`redact_url` lives here, beside the messages it keeps clean, so that every module of the client can
use both without importing each other in a circle.
"""

from __future__ import annotations

import ast
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx2
from huggingface_hub import errors as hf_errors

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

T = TypeVar("T")


def redact_url(url: str) -> str:
    """`url` without credentials, query or fragment: what may be shown, logged and audited."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def refuse_redirect(response: httpx2.Response) -> None:
    """Raise for a redirect: none is followed, since a model server must not be able to send a prompt, or
    the endpoint's key, on to another host. An answered redirect is a URL to correct (most often an
    http:// address behind a proxy that moves it to https://), so it fails at once, in words."""
    if 300 <= response.status_code < 400:
        raise hf_errors.HfHubHTTPError(f"Redirect (HTTP {response.status_code}) not followed", response=response)


def _redirect_target(response: httpx2.Response) -> str:
    location = response.headers.get("location")
    if not location:
        return ""
    with contextlib.suppress(RuntimeError):  # a response made without a request (tests) cannot resolve it
        location = str(response.request.url.join(location))
    return f" to {redact_url(location)}"


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
        return _error_message(exc.server_message.strip())
    try:
        text = exc.response.text.strip()
    except (httpx2.ResponseNotRead, httpx2.StreamError, AttributeError):
        return None
    return text or None


def _error_message(text: str) -> str:
    """The sentence inside an OpenAI-style error object that huggingface_hub passed on as its text (vLLM's
    400 for tools it does not serve reads "{'message': ..., 'type': ...}"); other text as it is."""
    if text.startswith("{") and "message" in text:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return text
        if isinstance(value, dict) and isinstance(value.get("message"), str):
            return value["message"].strip()
    return text


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
        if status is not None and 300 <= status < 400:
            return InferenceError(
                f"{where} answered with a redirect (HTTP {status}){_redirect_target(exc.response)}, which is not "
                "followed; set the endpoint's URL to the address it points to.",
                base_url=base_url,
                status_code=status,
            )
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


async def guarded(iterator: AsyncIterator[T], base_url: str, timeout: float) -> AsyncIterator[T]:
    """Re-raise the client's errors as typed ones, without wrapping the caller's own callbacks."""
    while True:
        try:
            item = await iterator.__anext__()
        except StopAsyncIteration:
            return
        except Exception as exc:
            raise translate_error(exc, base_url=base_url, timeout=timeout) from exc
        yield item
