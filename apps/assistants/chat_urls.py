from __future__ import annotations

from django.urls import path

from apps.assistants import chat_views

app_name = "chat"

urlpatterns = [
    path("", chat_views.chat_index, name="index"),
    path("new/<int:trigger_id>/", chat_views.chat_start, name="start"),
    path("<int:session_id>/", chat_views.chat_session, name="session"),
    path("calls/<int:call_id>/", chat_views.chat_call, name="call"),
]
