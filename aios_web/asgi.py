"""ASGI entry point: HTTP through Django, WebSocket through Channels (exact origins only, session auth), and the
MCP endpoint (/mcp, apps/assistants/mcp_server.py) ahead of Django: outside agents' Streamable HTTP, bearer tokens."""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aios_web.settings")
# Django advises against persistent connections under ASGI (each request may run on another thread).
os.environ.setdefault("DJANGO_CONN_MAX_AGE", "0")

from django.core.asgi import get_asgi_application

from apps.core.startup import settings_or_exit
from apps.core.telemetry.tracing import configure as tracing_configure

# A refused configuration or (in production) an unreachable database stops the server with one line.
settings_or_exit(serving=True)

# Before Django loads its middleware: with tracing on, the Django instrumentation adds one.
tracing_configure("web")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import OriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402

from apps.approvals.routing import websocket_urlpatterns as inbox_websockets  # noqa: E402
from apps.assistants.mcp_server import endpoint as mcp_endpoint  # noqa: E402
from apps.assistants.mcp_server import is_mcp_path  # noqa: E402
from apps.assistants.routing import websocket_urlpatterns as chat_websockets  # noqa: E402
from apps.runs.routing import websocket_urlpatterns  # noqa: E402

protocol_router = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # Exact origins, scheme and port included: a page on another port of the same host is another site.
        "websocket": OriginValidator(
            AuthMiddlewareStack(URLRouter([*websocket_urlpatterns, *inbox_websockets, *chat_websockets])),
            [url.rstrip("/") for url in settings.AIOS_PUBLIC_URLS],
        ),
    }
)


async def _lifespan(receive: Any, send: Any) -> None:
    """Start and stop the MCP endpoint's session manager with the server, when the server sends lifespan events
    (uvicorn with --lifespan on or auto; with it off, the endpoint starts on its first request)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                await mcp_endpoint.startup()
            except Exception as error:  # the server refuses to start rather than serve without /mcp
                await send({"type": "lifespan.startup.failed", "message": str(error)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await mcp_endpoint.shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def application(scope: Any, receive: Any, send: Any) -> None:
    """/mcp to the MCP endpoint, lifespan events to its session manager, everything else as before."""
    if scope["type"] == "http" and is_mcp_path(scope["path"]):
        await mcp_endpoint(scope, receive, send)
    elif scope["type"] == "lifespan":
        await _lifespan(receive, send)
    else:
        await protocol_router(scope, receive, send)
