"""Top-level URLs: pages, the API, the admin and the health check."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from apps.accounts.views import home
from apps.core.views import csp_report, healthz, metrics_view, not_found, readyz

urlpatterns = [
    path("", home, name="home"),
    path("accounts/", include("apps.accounts.urls")),
    path("workflows/", include("apps.workflows.urls")),
    path("runs/", include("apps.runs.urls")),
    path("inbox/", include("apps.approvals.urls")),
    path("models/", include("apps.inference.urls")),
    path("connections/", include("apps.connectors.urls")),
    path("knowledge/", include("apps.knowledge.urls")),
    path("dashboards/", include("apps.dashboards.urls")),
    path("evaluations/", include("apps.evaluations.urls")),
    path("audit/", include("apps.audit.urls")),
    path("mcp-tools/", include("apps.assistants.urls")),  # the MCP endpoint itself is /mcp, in aios_web/asgi.py
    path("assistant/", include("apps.assistants.chat_urls")),  # chat assistants (answers stream over /ws/assistant/)
    path("api/", include(("aios_web.api_urls", "api"))),
    path("hooks/", include("apps.runs.hook_urls")),  # triggers: signed webhooks, no sign-in
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
    path("csp-report", csp_report, name="csp-report"),
    path("readyz", readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
]

# JSON for unmatched /api/ addresses, the HTML page elsewhere.
handler404 = not_found
