"""The chat assistants over REST, on the same services as the pages: the assistants one may talk to, one's own
conversations (nobody else's: 404), sending a message (201 with the answer's message and its run; read the answer
again, or watch the run, until it has its text), and confirming or declining an action the assistant waits on."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.decorators import api_view
from rest_framework.request import Request
from rest_framework.response import Response

from apps.assistants.chat_selectors import (
    Answer,
    chat_answer,
    chat_answers,
    chat_call_get_for_user,
    chat_messages,
    chat_session_get_for_user,
    chat_session_list_for_user,
    chat_trigger_get_for_user,
    chat_trigger_list_for_user,
)
from apps.assistants.chat_services import MESSAGE_MAX_LENGTH, chat_call_answer, chat_message_send, chat_session_start
from apps.assistants.models import ChatMessage, ChatSession
from apps.core.api import PAGE_PARAMETERS, page_schema, paged_response
from apps.runs.models import StepRun


class AssistantSerializer(serializers.Serializer):
    """A chat assistant: its trigger's id (start a conversation with it), title, greeting and workflow."""

    id = serializers.IntegerField(source="pk")
    title = serializers.SerializerMethodField()
    greeting = serializers.SerializerMethodField()
    workflow = serializers.CharField(source="workflow.slug")

    def get_title(self, trigger: Any) -> str:
        return str(trigger.config.get("title") or trigger.name)

    def get_greeting(self, trigger: Any) -> str:
        return str(trigger.config.get("greeting") or "")


class SessionSerializer(serializers.ModelSerializer):
    assistant = serializers.IntegerField(source="trigger_id")
    workflow = serializers.CharField(source="workflow.slug")

    class Meta:
        model = ChatSession
        fields = ["id", "title", "assistant", "workflow", "created_at", "updated_at"]


class SessionCreateSerializer(serializers.Serializer):
    assistant = serializers.IntegerField(help_text="The assistant's id (GET /api/assistant/).")


class MessageCreateSerializer(serializers.Serializer):
    text = serializers.CharField(
        max_length=MESSAGE_MAX_LENGTH, allow_blank=True, trim_whitespace=False, help_text="1 to 4000 characters."
    )


class CallAnswerSerializer(serializers.Serializer):
    confirmed = serializers.BooleanField(help_text="true runs the action; false declines it (the assistant is told).")


def _tool(use: Any) -> dict[str, Any]:
    call: StepRun = use.call
    return {
        "id": call.pk,
        "tool": call.name,
        "step_type": call.step_type,
        "state": call.state,
        "state_words": use.state_words,
        "awaiting_confirmation": use.awaiting,
        "arguments": call.input,
        "result": call.output if call.state == StepRun.State.SUCCEEDED else None,
        "error": call.error,
    }


def message_data(item: ChatMessage | Answer) -> dict[str, Any]:
    """A message as the API shows it; an answer with its state, run, tools and the calls waiting for the person."""
    if isinstance(item, ChatMessage):
        return {"id": item.pk, "role": item.role, "text": item.text, "run": None, "created_at": item.created_at}
    message = item.message
    return {
        "id": message.pk,
        "role": message.role,
        "text": message.text,
        "run": message.run_id,
        "state": item.state,
        "error": item.error,
        "tools": [_tool(use) for use in item.tools],
        "created_at": message.created_at,
    }


@extend_schema(
    operation_id="assistant_list",
    parameters=PAGE_PARAMETERS,
    responses={200: page_schema(AssistantSerializer(many=True), "PaginatedAssistantList")},
)
@api_view(["GET"])
def assistant_list_view(request: Request) -> Response:
    """The chat assistants the caller may talk to, by title, a page at a time."""
    return paged_response(
        request, chat_trigger_list_for_user(request.user), lambda rows: AssistantSerializer(rows, many=True).data
    )


@extend_schema(
    methods=["GET"],
    operation_id="assistant_sessions_list",
    parameters=PAGE_PARAMETERS,
    responses={200: page_schema(SessionSerializer(many=True), "PaginatedSessionList")},
)
@extend_schema(methods=["POST"], request=SessionCreateSerializer, responses={201: SessionSerializer})
@api_view(["GET", "POST"])
def session_list_view(request: Request) -> Response:
    """The caller's own conversations, most recently active first, a page at a time; POST starts one with an
    assistant."""
    if request.method == "POST":
        body = SessionCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        trigger = chat_trigger_get_for_user(request.user, trigger_id=body.validated_data["assistant"])
        session = chat_session_start(actor=request.user, trigger=trigger)  # type: ignore[arg-type]
        return Response(SessionSerializer(session).data, status=status.HTTP_201_CREATED)
    sessions = chat_session_list_for_user(request.user).order_by("-updated_at", "-pk")
    return paged_response(request, sessions, lambda rows: SessionSerializer(rows, many=True).data)


@extend_schema(responses={200: SessionSerializer})
@api_view(["GET"])
def session_detail_view(request: Request, session_id: int) -> Response:
    """One of the caller's conversations."""
    return Response(SessionSerializer(chat_session_get_for_user(request.user, session_id=session_id)).data)


@extend_schema(
    methods=["GET"],
    parameters=PAGE_PARAMETERS,
    responses={
        200: page_schema(serializers.ListField(child=serializers.DictField()), "PaginatedChatMessageList"),
    },
)
@extend_schema(methods=["POST"], request=MessageCreateSerializer, responses={201: OpenApiTypes.OBJECT})
@api_view(["GET", "POST"])
def message_list_view(request: Request, session_id: int) -> Response:
    """A conversation's messages in order, oldest first, a page at a time (answers with their state, run and
    tools); POST sends a message and answers 201 with the assistant's message bound to the run that writes it."""
    session = chat_session_get_for_user(request.user, session_id=session_id)
    if request.method == "POST":
        body = MessageCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        answer = chat_message_send(actor=request.user, session=session, text=body.validated_data["text"])  # type: ignore[arg-type]
        return Response(message_data(chat_answer(answer)), status=status.HTTP_201_CREATED)
    messages = chat_messages(session)
    return paged_response(request, messages, lambda rows: [message_data(item) for item in chat_answers(rows)])


@extend_schema(request=CallAnswerSerializer, responses={200: OpenApiTypes.OBJECT})
@api_view(["POST"])
def call_answer_view(request: Request, call_id: int) -> Response:
    """Confirm or decline an action the assistant waits on in one of the caller's conversations (409 when it was
    already answered); answers with the message it belongs to."""
    message, call = chat_call_get_for_user(request.user, call_id=call_id)
    body = CallAnswerSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    chat_call_answer(actor=request.user, message=message, call=call, confirmed=body.validated_data["confirmed"])  # type: ignore[arg-type]
    return Response(message_data(chat_answer(message)))
