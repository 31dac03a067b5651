"""ASGI entry point: HTTP through Django, WebSocket through Channels (exact origins only, session auth)."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aios_web.settings")
# Django advises against persistent connections under ASGI (each request may run on another thread).
os.environ.setdefault("DJANGO_CONN_MAX_AGE", "0")

from django.core.asgi import get_asgi_application

from apps.core.telemetry.tracing import configure as tracing_configure

# Before Django loads its middleware: with tracing on, the Django instrumentation adds one.
tracing_configure("web")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import OriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402

from apps.approvals.routing import websocket_urlpatterns as inbox_websockets  # noqa: E402
from apps.runs.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # Exact origins, scheme and port included: a page on another port of the same host is another site.
        "websocket": OriginValidator(
            AuthMiddlewareStack(URLRouter([*websocket_urlpatterns, *inbox_websockets])),
            [url.rstrip("/") for url in settings.AIOS_PUBLIC_URLS],
        ),
    }
)
