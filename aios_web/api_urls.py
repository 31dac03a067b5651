"""The REST API under /api/: one router for every app, schema and docs."""

from __future__ import annotations

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.routers import DefaultRouter

from apps.accounts.api.views import api_token_sign_in_view
from apps.approvals.api.views import (
    AbsenceViewSet,
    ApprovalQueueViewSet,
    ApprovalRequestViewSet,
    NotificationViewSet,
    corrections_export_view,
)
from apps.connectors.api.views import ConnectionViewSet
from apps.knowledge.api.views import (
    collection_detail_view,
    collection_list_view,
    collection_reindex_view,
    collection_search_view,
    document_detail_view,
    document_list_view,
)
from apps.runs.api.views import (
    RunViewSet,
    document_upload_view,
    incident_resolve_view,
    run_start_view,
    run_test_start_api_view,
)
from apps.workflows.api.exchange import workflow_document_schema_view, workflow_export_view, workflow_import_view
from apps.workflows.api.pinned import pinned_output_list_view, pinned_output_view
from apps.workflows.api.views import (
    WorkflowViewSet,
    workflow_draft_edit_view,
    workflow_draft_publish_view,
    workflow_draft_validate_view,
    workflow_draft_view,
    workflow_version_detail_view,
    workflow_version_diff_view,
    workflow_version_list_view,
    workflow_version_restore_view,
)

router = DefaultRouter()
router.register("workflows", WorkflowViewSet, basename="workflow")
router.register("runs", RunViewSet, basename="run")
router.register("approvals", ApprovalRequestViewSet, basename="approval")
router.register("approval-queues", ApprovalQueueViewSet, basename="approval-queue")
router.register("absences", AbsenceViewSet, basename="absence")
router.register("notifications", NotificationViewSet, basename="notification")
router.register("connections", ConnectionViewSet, basename="connection")

urlpatterns = [
    path("workflows/<slug:slug>/runs/", run_start_view, name="workflow-run-start"),
    path("workflows/import/", workflow_import_view, name="workflow-import"),
    path("workflows/<slug:slug>/draft/tests/", run_test_start_api_view, name="workflow-draft-test"),
    path("workflows/<slug:slug>/draft/pinned/", pinned_output_list_view, name="workflow-pinned-list"),
    path("workflows/<slug:slug>/draft/pinned/<str:key>/", pinned_output_view, name="workflow-pinned"),
    path("workflows/<slug:slug>/export/", workflow_export_view, name="workflow-export"),
    path("workflows/<slug:slug>/corrections/", corrections_export_view, name="workflow-corrections"),
    path("workflows/<slug:slug>/draft/", workflow_draft_view, name="workflow-draft"),
    path("workflows/<slug:slug>/draft/edits/", workflow_draft_edit_view, name="workflow-draft-edits"),
    path("workflows/<slug:slug>/draft/validate/", workflow_draft_validate_view, name="workflow-draft-validate"),
    path("workflows/<slug:slug>/draft/publish/", workflow_draft_publish_view, name="workflow-draft-publish"),
    path("workflows/<slug:slug>/versions/", workflow_version_list_view, name="workflow-version-list"),
    path("workflows/<slug:slug>/versions/diff/", workflow_version_diff_view, name="workflow-version-diff"),
    path("workflows/<slug:slug>/versions/<int:number>/", workflow_version_detail_view, name="workflow-version-detail"),
    path(
        "workflows/<slug:slug>/versions/<int:number>/restore/",
        workflow_version_restore_view,
        name="workflow-version-restore",
    ),
    path("schema/workflow/v1.json", workflow_document_schema_view, name="workflow-document-schema"),
    path("incidents/<int:incident_id>/resolve/", incident_resolve_view, name="incident-resolve"),
    path("documents/", document_upload_view, name="document-upload"),
    path("", include("apps.runs.api.trigger_urls")),  # triggers
    path("", include("apps.assistants.api.urls")),  # chat assistants
    # Knowledge collections (apps.knowledge.api).
    path("collections/", collection_list_view, name="collection-list"),
    path("collections/<slug:name>/", collection_detail_view, name="collection-detail"),
    path("collections/<slug:name>/reindex/", collection_reindex_view, name="collection-reindex"),
    path("collections/<slug:name>/documents/", document_list_view, name="collection-documents"),
    path("collections/<slug:name>/documents/<int:document_id>/", document_detail_view, name="collection-document"),
    path("collections/<slug:name>/search/", collection_search_view, name="collection-search"),
    path("auth/token/", api_token_sign_in_view, name="auth-token"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerSplitView.as_view(url_name="api:schema"), name="docs"),
    path("", include(router.urls)),
]
