"""The triggers API's routes, included into /api/ (aios_web/api_urls.py)."""

from __future__ import annotations

from django.urls import path

from apps.runs.api import trigger_views

urlpatterns = [
    path("workflows/<slug:slug>/triggers/", trigger_views.workflow_trigger_list_view, name="workflow-trigger-list"),
    path("triggers/<int:trigger_id>/", trigger_views.trigger_detail_view, name="trigger-detail"),
    path("triggers/<int:trigger_id>/history/", trigger_views.trigger_history_view, name="trigger-history"),
    path("triggers/<int:trigger_id>/rotate-secret/", trigger_views.trigger_rotate_view, name="trigger-rotate"),
]
