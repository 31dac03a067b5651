"""/api/assistant/: chat assistants (apps/assistants/api/chat.py). Included under the api namespace."""

from __future__ import annotations

from django.urls import path

from apps.assistants.api import chat

urlpatterns = [
    path("assistant/", chat.assistant_list_view, name="chat-assistant-list"),
    path("assistant/sessions/", chat.session_list_view, name="chat-session-list"),
    path("assistant/sessions/<int:session_id>/", chat.session_detail_view, name="chat-session-detail"),
    path("assistant/sessions/<int:session_id>/messages/", chat.message_list_view, name="chat-message-list"),
    path("assistant/calls/<int:call_id>/", chat.call_answer_view, name="chat-call-answer"),
]
