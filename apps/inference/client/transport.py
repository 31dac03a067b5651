"""Reaching a model server: where it is (`Endpoint`, `default_base_url`), the HTTP client calls share
(`new_async_http_client`), and the huggingface_hub client each call speaks through.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx2
from huggingface_hub import AsyncInferenceClient
from huggingface_hub.utils import get_async_session
from huggingface_hub.utils._http import async_hf_request_event_hook, async_hf_response_event_hook

from apps.inference.errors import InferenceError

from .failures import refuse_redirect, translate_error

DEFAULT_BASE_URL = "http://127.0.0.1:58080"
# huggingface_hub falls back to a locally stored Hugging Face token when no key is given; a placeholder
# key keeps a developer's personal token from being sent to whatever server an endpoint points at.
NO_KEY = "-"


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


async def _refuse_redirect(response: httpx2.Response) -> None:
    refuse_redirect(response)


def new_async_http_client(*, max_connections: int | None = None) -> httpx2.AsyncClient:
    """An HTTP client to share across async calls (`Endpoint(http_client=...)`); the caller closes it.

    It carries huggingface_hub's own request and response hooks (which read error bodies), but never
    follows redirects (see `refuse_redirect`), and keeps up to `max_connections` connections alive
    (huggingface_hub's default keeps 20, fewer than the calls a worker has in flight, so connections
    would churn and add to time to first token).
    """
    if max_connections is None:
        client = get_async_session()
        client.follow_redirects = False
        client.event_hooks = {**client.event_hooks, "response": [*client.event_hooks["response"], _refuse_redirect]}
        return client
    return httpx2.AsyncClient(
        event_hooks={
            "request": [async_hf_request_event_hook],
            "response": [async_hf_response_event_hook, _refuse_redirect],
        },
        follow_redirects=False,
        timeout=None,
        limits=httpx2.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
    )


@dataclass(frozen=True)
class Endpoint:
    """Where a call goes and how long each network wait may take.

    `timeout` bounds each wait of a stream (connect, each read), and the whole reply of a call that is not
    streamed. `http_client` (from `new_async_http_client`) lets calls on one event loop share connections;
    without it each call opens, and closes, a client of its own. The token is kept out of `repr`, so an
    endpoint in a log line or a traceback does not carry it.
    """

    base_url: str
    token: str | None = field(default=None, repr=False)
    timeout: float = 60.0
    http_client: httpx2.AsyncClient | None = field(default=None, repr=False, compare=False)

    def error(self, exc: BaseException) -> InferenceError:
        return translate_error(exc, base_url=self.base_url, timeout=self.timeout)

    @contextlib.asynccontextmanager
    async def http(self) -> AsyncIterator[httpx2.AsyncClient]:
        """The shared HTTP client, or one for this call alone (with the same no-redirect rule)."""
        if self.http_client is not None:
            yield self.http_client
            return
        async with new_async_http_client() as own:
            yield own

    @contextlib.asynccontextmanager
    async def session(self, url: str | None = None) -> AsyncIterator[AsyncInferenceClient]:
        """An `AsyncInferenceClient` for one attempt of one call, at `url` (default: `base_url`).

        A fresh one each time, on purpose. Building it costs about 2 µs once it is handed an HTTP client
        (what is slow, about 20 ms, is the HTTP client it would otherwise build, with its TLS context). And
        it is not safe to share: huggingface_hub 2.4 enters every streamed response into the instance's
        one `exit_stack` and releases them only in `close()`, so a shared instance would hold every stream
        it ever opened (and the connection of each one left unread) until it is closed, and one call's
        `close()` would cut off the streams of every other call in flight on it.
        """
        async with self.http() as http:
            try:
                client = AsyncInferenceClient(
                    model=url or self.base_url, api_key=self.token or NO_KEY, timeout=self.timeout
                )
            except Exception as exc:
                raise self.error(exc) from exc
            # Hand it our client instead of letting it build one: connection reuse, and no redirects.
            client._async_client = http
            async with client:
                yield client


async def aclose(*iterators: AsyncIterator[Any]) -> None:
    """Close a call's stream generators here, on the loop, when the call ends however it ends (finished,
    failed, cancelled), rather than leaving half-read generators for the garbage collector to finalise
    later, on whatever thread it runs (the response itself is closed with the client)."""
    for iterator in iterators:
        close = getattr(iterator, "aclose", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()
