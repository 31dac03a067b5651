"""The eight ways to call a model through apps.inference.client, for tests that must cover each one:
TGI native or OpenAI-compatible chat, streamed or not, synchronous or asynchronous."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from apps.inference import client

# (protocol, streamed, asynchronous)
Shape = tuple[str, bool, bool]

SHAPES = [
    pytest.param(("generate", True, False), id="generate_stream"),
    pytest.param(("generate", True, True), id="agenerate_stream"),
    pytest.param(("generate", False, False), id="generate"),
    pytest.param(("generate", False, True), id="agenerate"),
    pytest.param(("chat", True, False), id="chat_stream"),
    pytest.param(("chat", True, True), id="achat_stream"),
    pytest.param(("chat", False, False), id="chat"),
    pytest.param(("chat", False, True), id="achat"),
]


def call(shape: Shape, base_url: str, text: str, *, received: list[str] | None = None, **options: Any) -> Any:
    """Run one call of `shape`; `text` is the prompt or the single user message, `options` pass through
    (with `max_tokens`, default 100, meaning `max_new_tokens` on the native protocol). Streamed tokens are
    appended to `received`."""
    protocol, streamed, is_async = shape
    options.setdefault("max_tokens", 100)
    if protocol == "generate":
        options["max_new_tokens"] = options.pop("max_tokens")
        options["prompt"] = text
    else:
        options["messages"] = [{"role": "user", "content": text}]
    if streamed:
        options.setdefault("on_token", (received if received is not None else []).append)
    name = ("a" if is_async else "") + protocol + ("_stream" if streamed else "")
    function = getattr(client, name)
    if is_async:
        return asyncio.run(function(base_url=base_url, **options))
    return function(base_url=base_url, **options)
