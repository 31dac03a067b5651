from __future__ import annotations

from django.urls import path

from apps.assistants.consumers import ChatAnswerConsumer

websocket_urlpatterns = [path("ws/assistant/messages/<int:message_id>/", ChatAnswerConsumer.as_asgi())]
