from __future__ import annotations

from django.urls import path

from apps.assistants import views

app_name = "assistants"

urlpatterns = [
    path("", views.tool_list, name="tools"),
    path("workflow/<slug:slug>/", views.workflow_tool, name="workflow-tool"),
    path("workflow/<slug:slug>/withdraw/", views.workflow_tool_withdraw_view, name="workflow-tool-withdraw"),
]
