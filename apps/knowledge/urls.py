"""Pages of the knowledge app."""

from __future__ import annotations

from django.urls import path

from apps.knowledge import views

app_name = "knowledge"
urlpatterns = [
    path("", views.collection_list, name="collections"),
    path("<slug:name>/", views.collection_detail, name="detail"),
    path("<slug:name>/documents/", views.document_table, name="documents"),
    path("<slug:name>/upload/", views.document_upload_view, name="upload"),
    path("<slug:name>/documents/<int:document_id>/delete/", views.document_delete_view, name="document-delete"),
    path("<slug:name>/settings/", views.collection_settings, name="settings"),
    path("<slug:name>/reindex/", views.collection_reindex_view, name="reindex"),
    path("<slug:name>/delete/", views.collection_delete_view, name="delete"),
    path("<slug:name>/search/", views.collection_search_view, name="search"),
]
