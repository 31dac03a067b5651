"""Webhook endpoints (mounted at /hooks/): no sign-in, a signature per request (apps/runs/trigger_views.py)."""

from __future__ import annotations

from django.urls import path

from apps.runs import trigger_views

app_name = "hooks"

urlpatterns = [
    path("<str:token>/", trigger_views.webhook, name="receive"),
]
