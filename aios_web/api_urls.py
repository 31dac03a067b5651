"""The REST API under /api/: one router for every app, schema and docs."""

from __future__ import annotations

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.authtoken.views import obtain_auth_token
from rest_framework.routers import DefaultRouter

from apps.approvals.api.views import ApprovalRequestViewSet
from apps.runs.api.views import RunViewSet, incident_resolve_view, run_start_view
from apps.workflows.api.exchange import workflow_document_schema_view, workflow_export_view, workflow_import_view
from apps.workflows.api.views import WorkflowViewSet

router = DefaultRouter()
router.register("workflows", WorkflowViewSet, basename="workflow")
router.register("runs", RunViewSet, basename="run")
router.register("approvals", ApprovalRequestViewSet, basename="approval")

urlpatterns = [
    path("workflows/<slug:slug>/runs/", run_start_view, name="workflow-run-start"),
    path("workflows/import/", workflow_import_view, name="workflow-import"),
    path("workflows/<slug:slug>/export/", workflow_export_view, name="workflow-export"),
    path("schema/workflow/v1.json", workflow_document_schema_view, name="workflow-document-schema"),
    path("incidents/<int:incident_id>/resolve/", incident_resolve_view, name="incident-resolve"),
    path("auth/token/", obtain_auth_token, name="auth-token"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerSplitView.as_view(url_name="api:schema"), name="docs"),
    path("", include(router.urls)),
]
