"""The four ways to call a model through apps.inference.client, for tests that must cover each one:
TGI native or OpenAI-compatible chat, streamed or not."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from apps.inference import client

# (protocol, streamed)
Shape = tuple[str, bool]

SHAPES = [
    pytest.param(("generate", True), id="agenerate_stream"),
    pytest.param(("generate", False), id="agenerate"),
    pytest.param(("chat", True), id="achat_stream"),
    pytest.param(("chat", False), id="achat"),
]

# Options that say where the call goes (`client.Endpoint`) and how it is made (the call's keywords);
# every other option belongs to the request.
ENDPOINT_OPTIONS = {"token", "timeout", "http_client"}
CALL_OPTIONS = {"on_token", "model_id", "retries", "backoff"}


def call(shape: Shape, base_url: str, text: str, *, received: list[str] | None = None, **options: Any) -> Any:
    """Run one call of `shape` to the end; `text` is the prompt or the single user message, `options` pass
    through to the endpoint, the request or the call (with `max_tokens`, default 100, meaning
    `max_new_tokens` on the native protocol). Streamed tokens are appended to `received`."""
    protocol, streamed = shape
    endpoint = client.Endpoint(base_url, **{name: options.pop(name) for name in ENDPOINT_OPTIONS & options.keys()})
    keywords = {name: options.pop(name) for name in CALL_OPTIONS & options.keys()}
    max_tokens = options.pop("max_tokens", 100)
    request: client.GenerateRequest | client.ChatRequest
    if protocol == "generate":
        request = client.GenerateRequest(prompt=text, max_new_tokens=max_tokens, **options)
    else:
        request = client.ChatRequest(messages=[{"role": "user", "content": text}], max_tokens=max_tokens, **options)
    if streamed:
        keywords.setdefault("on_token", (received if received is not None else []).append)
    function = getattr(client, "a" + protocol + ("_stream" if streamed else ""))
    return asyncio.run(function(endpoint, request, **keywords))
