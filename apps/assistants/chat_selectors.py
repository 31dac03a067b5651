"""Permission-aware reads of chat assistants: the assistants a person may talk to, her own conversations (nobody
else's, whatever their role), and what each answer shows: its text once its run has finished, the tools it used
and the calls that wait for her confirmation."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.models import AbstractUser, AnonymousUser
from django.db.models import QuerySet
from django.http import Http404

from apps.assistants.models import ChatMessage, ChatSession
from apps.core.permissions import restrict
from apps.runs.agent import tool_calls_awaiting_confirmation
from apps.runs.models import Run, StepRun
from apps.runs.presentation import Value, present_value
from apps.workflows.models import Trigger, Workflow
from apps.workflows.selectors import workflow_version_published_latest
from apps.workflows.triggers import chat_input_schema_problem

AnyUser = AbstractUser | AnonymousUser

HISTORY_LIMIT = 20
FINISHED = {Run.Status.SUCCEEDED, Run.Status.FAILED, Run.Status.CANCELLED}
AGENT_STEP_TYPE = "llm.agent"
LOOKUP_STEP_TYPE = "assistant.lookup"


def chat_trigger_list_for_user(user: AnyUser) -> list[Trigger]:
    """The chat assistants `user` may talk to: enabled chat triggers of workflows she may run, not archived, whose
    published version takes a message. By title."""
    runnable = restrict(Workflow.objects.filter(archived_at__isnull=True), user, "workflows.run_workflow")
    triggers = Trigger.objects.filter(kind=Trigger.Kind.CHAT, enabled=True, workflow__in=runnable).select_related(
        "workflow"
    )
    usable = []
    for trigger in triggers:
        version = workflow_version_published_latest(trigger.workflow)
        if version is not None and chat_input_schema_problem(version.input_schema) is None:
            usable.append(trigger)
    return sorted(usable, key=lambda t: (str(t.config.get("title") or t.name).lower(), t.pk))


def chat_trigger_get_for_user(user: AnyUser, *, trigger_id: int) -> Trigger:
    """A chat assistant `user` may talk to, else Http404 (one she may not use is, to her, no assistant)."""
    for trigger in chat_trigger_list_for_user(user):
        if trigger.pk == trigger_id:
            return trigger
    raise Http404("No such assistant.")


def chat_session_list_for_user(user: AnyUser) -> QuerySet[ChatSession]:
    """`user`'s own conversations, the most recently active first. Nobody sees another person's, admins included:
    a conversation is as private as her inbox."""
    if not user.is_authenticated:
        return ChatSession.objects.none()
    return ChatSession.objects.filter(user_id=user.pk).select_related("trigger", "workflow")


def chat_session_get_for_user(user: AnyUser, *, session_id: int) -> ChatSession:
    """One of `user`'s own conversations, else Http404."""
    session = chat_session_list_for_user(user).filter(pk=session_id).first()
    if session is None:
        raise Http404("No such conversation.")
    return session


def chat_message_get_for_user(user: AnyUser, *, message_id: int) -> ChatMessage:
    """A message of one of `user`'s own conversations, else Http404."""
    message = (
        ChatMessage.objects.filter(pk=message_id, session__user_id=user.pk if user.is_authenticated else -1)
        .select_related("session", "run")
        .first()
    )
    if message is None:
        raise Http404("No such message.")
    return message


def chat_call_get_for_user(user: AnyUser, *, call_id: int) -> tuple[ChatMessage, StepRun]:
    """A tool call of an answer in one of `user`'s conversations, with that answer; else Http404."""
    call = StepRun.objects.filter(pk=call_id, parent__isnull=False).first()
    if call is None or not user.is_authenticated:
        raise Http404("No such action.")
    message = (
        ChatMessage.objects.filter(run_id=call.run_id, session__user_id=user.pk, role=ChatMessage.Role.ASSISTANT)
        .select_related("session", "run")
        .first()
    )
    if message is None:
        raise Http404("No such action.")
    return message, call


def run_answer_text(run: Run) -> str:
    """What a finished run answered: its agent's `text`, else the run output's `text`, else its output in JSON."""
    agent = (
        StepRun.objects.filter(run=run, step_type=AGENT_STEP_TYPE, parent__isnull=True, state=StepRun.State.SUCCEEDED)
        .order_by("-position", "-pk")
        .first()
    )
    if agent is not None and isinstance(agent.output, dict) and isinstance(agent.output.get("text"), str):
        return str(agent.output["text"])
    output = run.output
    if isinstance(output, dict) and isinstance(output.get("text"), str):
        return str(output["text"])
    if output in (None, {}, [], ""):
        return ""
    return json.dumps(output, ensure_ascii=False, indent=2)


def chat_answers_fill(messages: list[ChatMessage]) -> None:
    """Fill the text of answers whose run has succeeded since they were last read (once: a conditional update on
    an empty text, so two readers write the same thing at most once)."""
    for message in messages:
        run = message.run
        if message.role != ChatMessage.Role.ASSISTANT or message.text or run is None:
            continue
        if run.status == Run.Status.SUCCEEDED:
            text = run_answer_text(run)
            if text:
                ChatMessage.objects.filter(pk=message.pk, text="").update(text=text)
                message.text = text


def chat_history(session: ChatSession, *, before: ChatMessage | None = None) -> list[dict[str, str]]:
    """The conversation as a workflow's `history` input: the last HISTORY_LIMIT messages with text, oldest first,
    as {role, text}. Answers still being written, and failed ones, are left out."""
    messages = session.messages.select_related("run")
    if before is not None:
        messages = messages.filter(pk__lt=before.pk)
    recent = list(messages.order_by("-created_at", "-pk")[: HISTORY_LIMIT * 2])
    chat_answers_fill(recent)
    kept = [m for m in recent if m.text][:HISTORY_LIMIT]
    return [{"role": m.role, "text": m.text} for m in reversed(kept)]


@dataclass
class ItemRow:
    cells: list[str]
    link: str = ""


@dataclass
class ItemsTable:
    """A lookup's items as a small table: a few readable columns, the first cell linked to the item's page."""

    columns: list[str]
    rows: list[ItemRow]


@dataclass
class ToolUse:
    """One tool call of an answer, as the conversation shows it."""

    call: StepRun
    state_words: str
    result: Value | None = None
    items: ItemsTable | None = None
    summary: str = ""
    arguments: Value | None = None
    awaiting: bool = False


# The columns a lookup's items show first, by key; ids, raw timestamps and machine states stay in the run's page.
_ITEM_COLUMNS = ("title", "name", "workflow", "queue", "status", "age", "sla", "when", "value")
_ITEM_COLUMNS_MAX = 4


def items_table(items: list[Any]) -> ItemsTable | None:
    """`items` (a list of records) as a small table, or None when they are not records."""
    records = [item for item in items if isinstance(item, dict)]
    if not records or len(records) != len(items):
        return None
    keys: list[str] = []
    for key in _ITEM_COLUMNS:
        if any(key in record for record in records):
            keys.append(key)
    if not keys:  # records of another shape: their first text fields
        keys = [key for key, value in records[0].items() if isinstance(value, str | int | float) and key != "link"]
    keys = keys[:_ITEM_COLUMNS_MAX]
    rows = []
    for record in records:
        cells = ["" if record.get(key) is None else str(record.get(key)) for key in keys]
        link = str(record.get("link") or "")
        rows.append(ItemRow(cells=cells, link=link if link.startswith("/") and not link.startswith("//") else ""))
    return ItemsTable(columns=[key.replace("_", " ").capitalize() for key in keys], rows=rows)


@dataclass
class Answer:
    """An assistant message as the conversation renders it."""

    message: ChatMessage
    state: str  # pending | answered | failed
    state_words: str
    stream_key: str = ""
    streamed_text: str = ""
    fencing_token: int = 0
    error: str = ""
    tools: list[ToolUse] = field(default_factory=list)

    @property
    def awaiting(self) -> list[ToolUse]:
        return [tool for tool in self.tools if tool.awaiting]


_CALL_WORDS = {
    "pending": "Waiting to run",
    "queued": "Waiting to run",
    "running": "Running",
    "succeeded": "Done",
    "failed": "Failed",
    "skipped": "Skipped",
    "cancelled": "Cancelled",
}


def _tool_use(call: StepRun, awaiting_ids: set[int]) -> ToolUse:
    awaiting = call.pk in awaiting_ids
    if awaiting:
        words = "Waits for your confirmation"
    elif call.state == StepRun.State.WAITING:
        words = "Waits for a reviewer's approval"
    else:
        words = _CALL_WORDS.get(call.state, call.state)
    use = ToolUse(call=call, state_words=words, awaiting=awaiting)
    use.arguments = present_value(call.input or {})
    output = call.output
    if call.state == StepRun.State.SUCCEEDED and output is not None:
        if isinstance(output, dict) and isinstance(output.get("items"), list):
            # assistant.lookup (and any tool answering with items): the items as a table, its summary above it.
            use.summary = str(output.get("summary") or "")
            use.items = items_table(output["items"])
            if use.items is None and output["items"]:
                use.result = present_value(output["items"])
            if not output["items"] and not use.summary:
                use.summary = "Nothing found."
        else:
            use.result = present_value(output)
    return use


def chat_answer(message: ChatMessage) -> Answer:
    """An assistant message with its run's state: its text once the run succeeded (filled here if not yet), the
    agent's streamed text while it runs, the tools it used and the calls waiting for the person's confirmation."""
    run = message.run
    if run is None:
        return Answer(message=message, state="failed", state_words="No answer", error="The run is gone.")
    run.refresh_from_db(fields=["status", "output", "error", "finished_at"])
    chat_answers_fill([message])
    steps = list(StepRun.objects.filter(run=run).order_by("position", "pk"))
    top = [s for s in steps if s.parent_id is None]
    agents = [s for s in top if s.step_type == AGENT_STEP_TYPE]
    streaming = agents[-1] if agents else next((s for s in reversed(top) if s.step_type.startswith("llm.")), None)
    awaiting_ids = {call.pk for call in tool_calls_awaiting_confirmation(run)}
    tools = [_tool_use(s, awaiting_ids) for s in steps if s.parent_id is not None]
    answer = Answer(message=message, state="pending", state_words="Answering", tools=tools)
    if streaming is not None:
        answer.stream_key = streaming.step_key
        answer.streamed_text = streaming.streamed_text
        answer.fencing_token = streaming.fencing_token
    if run.status == Run.Status.SUCCEEDED:
        answer.state, answer.state_words = "answered", "Answered"
    elif run.status in FINISHED:
        answer.state, answer.state_words = "failed", "No answer"
        failed = next((s for s in reversed(top) if s.error), None)
        answer.error = run.error or (failed.error if failed else "") or f"The run was {run.status}."
    elif answer.awaiting:
        answer.state_words = "Waits for you"
    return answer


def chat_messages(session: ChatSession) -> QuerySet[ChatMessage]:
    """The session's messages, oldest first (the id breaks ties), for a page of them to go through chat_answers."""
    return session.messages.select_related("run", "run__workflow").order_by("created_at", "pk")


def chat_answers(messages: Iterable[ChatMessage]) -> list[ChatMessage | Answer]:
    """Messages as a conversation shows them: a person's as the message, an answer as an Answer."""
    return [chat_answer(m) if m.role == ChatMessage.Role.ASSISTANT else m for m in messages]


def chat_conversation(session: ChatSession) -> list[ChatMessage | Answer]:
    """The session's messages in order: a person's as the message, an answer as an Answer."""
    return chat_answers(chat_messages(session))
