from __future__ import annotations

from django.urls import path

from apps.workflows import drafting_views, views

app_name = "workflows"

urlpatterns = [
    path("", views.workflow_list, name="list"),
    path("new/", views.workflow_create_view, name="create"),
    path("new/samples/<str:name>", views.gallery_sample_download, name="gallery-sample"),  # gallery sample files
    path("new/draft/", drafting_views.draft_propose_view, name="draft-propose"),  # describe it, get a draft
    path("new/drafts/<int:pk>/", drafting_views.draft_proposal_view, name="draft-proposal"),
    path("new/drafts/<int:pk>/accept/", drafting_views.draft_proposal_accept_view, name="draft-accept"),
    path("new/drafts/<int:pk>/discard/", drafting_views.draft_proposal_discard_view, name="draft-discard"),
    path("<slug:slug>/", views.workflow_detail, name="detail"),
    path("<slug:slug>/settings/", views.workflow_settings, name="settings"),
    path("<slug:slug>/edit/", views.workflow_editor, name="editor"),
    path("<slug:slug>/edit/operation/", views.workflow_editor_operation, name="editor-operation"),
    path("<slug:slug>/edit/steps/<str:key>/", views.workflow_editor_step, name="editor-step"),
    path("<slug:slug>/edit/publish/", views.workflow_publish, name="publish"),
    path("<slug:slug>/edit/run-form/", views.workflow_editor_inputs, name="editor-inputs"),
    path("<slug:slug>/edit/steps/<str:key>/pin/", views.workflow_pin, name="pin"),
    path("<slug:slug>/edit/steps/<str:key>/check/", views.workflow_check_expression, name="check-expression"),
    path("<slug:slug>/versions/", views.workflow_versions, name="versions"),
    path("<slug:slug>/export/", views.workflow_export_download, name="export"),
    path("<slug:slug>/import/", views.workflow_import_into, name="import"),
    path("<slug:slug>/versions/compare/", views.workflow_compare, name="compare"),
    path("<slug:slug>/versions/<int:number>/restore/", views.workflow_version_restore, name="version-restore"),
]
