"""Chat assistants: a person's conversations with a workflow that declares a chat trigger.

Each message she sends is a run of the workflow's published version started as her (trigger "chat"), with the
message and the conversation so far as its input; her right to run the workflow is checked by run_start, and an
agent's tools can do only what she may (apps/runs/agent.py refuses the rest). The answer is a message bound to
that run; its text is the run's output once it has finished (apps/assistants/chat_selectors.py).
"""

from __future__ import annotations

from django.db import transaction
from django.http import Http404

from apps.accounts.models import User
from apps.assistants.chat_selectors import chat_history
from apps.assistants.models import ChatMessage, ChatSession
from apps.audit.services import audit_record
from apps.core.exceptions import Conflict, Forbidden, ValidationFailed
from apps.runs.agent import tool_call_confirm
from apps.runs.models import StepRun
from apps.runs.services import run_start
from apps.workflows.models import Trigger
from apps.workflows.selectors import workflow_can_run, workflow_version_published_latest
from apps.workflows.triggers import chat_input_schema_problem

MESSAGE_MAX_LENGTH = 4000


def _require_usable(actor: User, trigger: Trigger) -> None:
    if trigger.kind != Trigger.Kind.CHAT:
        raise Conflict(f"{trigger} is not a chat assistant.")
    if not workflow_can_run(actor, trigger.workflow):
        raise Forbidden(f"You may not run “{trigger.workflow.name}”, so you may not chat with its assistant.")
    if not trigger.enabled:
        raise Conflict(f"The assistant “{trigger.config.get('title') or trigger.name}” is paused.")
    if trigger.workflow.archived_at is not None:
        raise Conflict(f"“{trigger.workflow.name}” is archived: its assistant answers no more.")
    version = workflow_version_published_latest(trigger.workflow)
    problem = "Nothing is published." if version is None else chat_input_schema_problem(version.input_schema)
    if problem:
        raise Conflict(f"The assistant cannot answer now: {problem}")


@transaction.atomic
def chat_session_start(*, actor: User, trigger: Trigger) -> ChatSession:
    """A new conversation of `actor` with the chat assistant `trigger`. Refuses (Forbidden) whoever may not run its
    workflow, and (Conflict) a paused assistant or one whose workflow no longer takes a message."""
    _require_usable(actor, trigger)
    title = str(trigger.config.get("title") or trigger.name)[:120]
    session = ChatSession.objects.create(user=actor, trigger=trigger, workflow=trigger.workflow, title=title)
    audit_record(
        actor=actor,
        verb="chat.session_started",
        target=session,
        data={"trigger": trigger.pk, "workflow": trigger.workflow.slug},
    )
    return session


@transaction.atomic
def chat_message_send(*, actor: User, session: ChatSession, text: str) -> ChatMessage:
    """Send `text` (1 to 4000 characters) in `actor`'s own conversation: stores her message, starts the run that
    answers it as her with {message, history (the last 20 messages, if the workflow takes it)}, and returns the
    answer's message bound to that run (its text comes when the run finishes). Refuses: Http404 for someone else's
    conversation; field errors for an empty or too long message; what run_start refuses (the right to run, the
    input). Nothing is kept when it refuses."""
    if session.user_id != actor.pk:
        raise Http404("No such conversation.")
    text = str(text or "").strip()
    if not text:
        raise ValidationFailed("The message is empty.", fields={"text": ["Write a message first."]})
    if len(text) > MESSAGE_MAX_LENGTH:
        raise ValidationFailed(
            "The message is too long.",
            fields={"text": [f"At most {MESSAGE_MAX_LENGTH} characters (this one has {len(text)})."]},
        )
    # The session's row orders its messages: two sends at once each see the other's message, or neither.
    session = ChatSession.objects.select_for_update().select_related("trigger", "workflow").get(pk=session.pk)
    _require_usable(actor, session.trigger)
    version = workflow_version_published_latest(session.workflow)
    assert version is not None  # _require_usable checked it
    history = chat_history(session)
    question = ChatMessage.objects.create(session=session, role=ChatMessage.Role.USER, text=text)
    inputs: dict[str, object] = {"message": text}
    if "history" in (version.input_schema.get("properties") or {}):
        inputs["history"] = history
    run, _ = run_start(actor=actor, workflow=session.workflow, inputs=inputs, trigger="chat")
    answer = ChatMessage.objects.create(session=session, role=ChatMessage.Role.ASSISTANT, run=run)
    fields = ["updated_at"]
    if not history and not session.messages.exclude(pk__in=[question.pk, answer.pk]).exists():
        # A conversation is named by its first question, so her list tells them apart.
        session.title = _title_from(text)
        fields.append("title")
    session.save(update_fields=fields)
    audit_record(
        actor=actor,
        verb="chat.message_sent",
        target=session,
        data={"message": question.pk, "run": run.pk, "characters": len(text), "history": len(history)},
    )
    return answer


def _title_from(text: str) -> str:
    words = " ".join(text.split())
    return words if len(words) <= 80 else words[:79].rstrip() + "…"


def chat_call_answer(*, actor: User, message: ChatMessage, call: StepRun, confirmed: bool) -> StepRun:
    """Confirm or decline a tool call of an answer in `actor`'s own conversation (apps/runs/agent.py
    tool_call_confirm: only the person who started the run may; a call no longer waiting is a Conflict)."""
    if message.session.user_id != actor.pk or message.run_id != call.run_id:
        raise Http404("No such action.")
    return tool_call_confirm(step_run=call, actor=actor, confirmed=confirmed)
