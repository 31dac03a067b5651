"""Pages of the connectors app."""

from __future__ import annotations

from django.urls import path

from apps.connectors import views

app_name = "connectors"
urlpatterns = [
    path("", views.connection_list, name="connections"),
    path("new/", views.connection_new, name="create"),
    path("new/test/", views.connection_test_view, name="create-test"),
    path("teams/<slug:slug>/", views.team_connections, name="team"),
    path("<slug:name>/", views.connection_detail, name="detail"),
    path("<slug:name>/test/", views.connection_test_view, name="test"),
    path("<slug:name>/toggle/", views.connection_toggle, name="toggle"),
    path("<slug:name>/delete/", views.connection_delete_view, name="delete"),
    path("<slug:name>/openapi/", views.connection_openapi, name="openapi"),
]
