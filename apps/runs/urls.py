from __future__ import annotations

from django.urls import path

from apps.runs import trigger_views, views

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
    path("<int:run_id>/calls/<str:key>/confirm/", views.tool_call_confirm_view, name="tool-call-confirm"),
    path("incidents/<int:incident_id>/resolve/", views.incident_resolve_view, name="incident-resolve"),
    # --- triggers (apps/runs/trigger_views.py) ---
    path("triggers/<slug:slug>/", trigger_views.trigger_list, name="triggers"),
    path("triggers/<slug:slug>/new/<str:kind>/", trigger_views.trigger_new, name="trigger-new"),
    path("trigger/<int:trigger_id>/", trigger_views.trigger_detail, name="trigger-detail"),
    path("trigger/<int:trigger_id>/edit/", trigger_views.trigger_edit, name="trigger-edit"),
    path("trigger/<int:trigger_id>/pause/", trigger_views.trigger_pause_view, name="trigger-pause"),
    path("trigger/<int:trigger_id>/resume/", trigger_views.trigger_resume_view, name="trigger-resume"),
    path("trigger/<int:trigger_id>/delete/", trigger_views.trigger_delete_view, name="trigger-delete"),
    path("trigger/<int:trigger_id>/rotate-secret/", trigger_views.trigger_rotate_view, name="trigger-rotate"),
    path("forms/<int:trigger_id>/", trigger_views.trigger_form, name="trigger-form"),
    path("trigger/<int:trigger_id>/check/", trigger_views.trigger_check_view, name="trigger-check"),
    # --- end triggers ---
]
