"""The development inference server as a Starlette application.

One process serves three protocol families on one port:

- TGI's native routes (`/`, `/generate`, `/generate_stream`, `/tokenize`, `/info`, `/health`, `/metrics`);
- the OpenAI-compatible routes TGI exposes (`/v1/chat/completions`, `/v1/completions`, `/v1/models`);
- TEI's `/embed` (and its OpenAI-style `/v1/embeddings`).

TEI's own `POST /` (which dispatches to `/embed` on an embedding model) is deliberately absent: `/` is
TGI's compat route here, and the inference client points `feature_extraction` at `/embed` directly.

Each family has its module (`tgi`, `chat`, `completions`, `tei`); what they share is beside them: the
per-application `state`, `responses`, request `bodies`, injected `faults`, and `jobs` (one paced generation).

Behaviour follows TGI's router byte for byte where clients can observe it: status
codes, error bodies, rejection texts, SSE framing, headers present and absent, field order. Nothing here
imports Django: the server runs as its own process next to the product.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from . import protocol
from .bodies import post_endpoint
from .chat import chat_completions
from .completions import completions
from .config import DevServerConfig
from .responses import TRANSPORT_KEY, empty_response
from .scripts import Script
from .state import DevServerState
from .tei import embed, openai_embeddings
from .tgi import generate, generate_stream, health, info, metrics, models, root, tokenize


async def _not_found_or_not_allowed(request: Request, exc: Exception) -> Response:
    # axum answers unknown routes with an empty 404 and wrong methods with an empty 405.
    status = exc.status_code if isinstance(exc, HTTPException) else 404
    return empty_response(status)


class _DevServerApp(Starlette):
    """Starlette, plus access to each HTTP connection's transport for the disconnect fault.

    ASGI has no message for "drop this connection without answering", so the disconnect fault closes the
    transport itself. uvicorn's `send` is a method of its per-request cycle object, which holds the
    transport; it is looked up here, before Starlette's middleware wraps `send`.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            transport = getattr(getattr(send, "__self__", None), "transport", None)
            if transport is not None and callable(getattr(transport, "close", None)):
                scope[TRANSPORT_KEY] = transport
        await super().__call__(scope, receive, send)


def create_app(config: DevServerConfig, script: Script | None = None) -> Starlette:
    """The development server's ASGI application.

    `script` overrides `config.script` (tests build scripts inline); with neither, only schema-shaped
    values and the deterministic fallback are served.
    """
    if script is None:
        script = Script.load(config.script) if config.script else Script.empty()
    routes = [
        Route("/", root, methods=["GET", "POST"]),
        Route("/generate", post_endpoint(protocol.GENERATE_REQUEST, generate), methods=["POST"]),
        Route("/generate_stream", post_endpoint(protocol.GENERATE_REQUEST, generate_stream), methods=["POST"]),
        Route("/tokenize", post_endpoint(protocol.GENERATE_REQUEST, tokenize), methods=["POST"]),
        Route("/v1/chat/completions", post_endpoint(protocol.CHAT_REQUEST, chat_completions), methods=["POST"]),
        Route("/v1/completions", post_endpoint(protocol.COMPLETION_REQUEST, completions), methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/info", info, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/ping", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/embed", post_endpoint(protocol.EMBED_REQUEST, embed), methods=["POST"]),
        Route("/v1/embeddings", post_endpoint(protocol.OPENAI_EMBED_REQUEST, openai_embeddings), methods=["POST"]),
        Route("/embeddings", post_endpoint(protocol.OPENAI_EMBED_REQUEST, openai_embeddings), methods=["POST"]),
    ]
    app = _DevServerApp(
        routes=routes,
        exception_handlers={404: _not_found_or_not_allowed, 405: _not_found_or_not_allowed},
    )
    app.state.devserver = DevServerState(config, script)
    return app
