from __future__ import annotations

from django.urls import path

from apps.inference import views

app_name = "inference"

urlpatterns = [
    path("endpoints/", views.endpoint_list, name="endpoints"),
    path("endpoints/new/", views.endpoint_edit, name="endpoint-create"),
    path("endpoints/<int:endpoint_id>/", views.endpoint_edit, name="endpoint-edit"),
    path("endpoints/<int:endpoint_id>/probe/", views.endpoint_probe_view, name="endpoint-probe"),
    path("endpoints/<int:endpoint_id>/toggle/", views.endpoint_toggle_view, name="endpoint-toggle"),
]
