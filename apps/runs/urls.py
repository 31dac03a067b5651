from __future__ import annotations

from django.urls import path

from apps.runs import views

app_name = "runs"

urlpatterns = [
    path("", views.run_list, name="list"),
    path("<int:run_id>/", views.run_detail, name="detail"),
    path("start/<slug:slug>/", views.run_create, name="create"),
    path("test/<slug:slug>/", views.run_test_start_view, name="test-start"),
    path("<int:run_id>/cancel/", views.run_cancel_view, name="cancel"),
    path("<int:run_id>/restart/", views.run_restart_view, name="restart"),
    path("<int:run_id>/replay/", views.run_replay_view, name="replay"),
    path("<int:run_id>/what-if/", views.run_what_if_view, name="what-if"),
    path("<int:run_id>/diff/", views.run_diff_view, name="diff"),
    path("incidents/<int:incident_id>/resolve/", views.incident_resolve_view, name="incident-resolve"),
]
