"""Chat assistants: the chat trigger's rule, conversations and their history, the answer's run started as the
person chatting, tools and confirmations shown in the conversation, the pages by persona and the API.

Answers are run in this process (tests/support/engine.py `drive`) against a scripted development server; the
streamed answer over a real WebSocket is tests/assistants/test_chat_streaming.py, the browser is
tests/e2e/test_chat_assistant.py."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from django.http import Http404
from django.test import Client
from rest_framework.test import APIClient

from apps.accounts.services import team_create, user_create
from apps.assistants.chat_selectors import HISTORY_LIMIT, chat_answer, chat_history, chat_trigger_get_for_user
from apps.assistants.chat_services import chat_call_answer, chat_message_send, chat_session_start
from apps.assistants.models import ChatMessage, ChatSession
from apps.audit.models import AuditEvent
from apps.core.exceptions import Conflict, Forbidden, ValidationFailed
from apps.inference.models import ModelEndpoint
from apps.runs.models import Run, StepRun
from apps.runs.triggers import trigger_create, trigger_pause
from apps.workflows.models import Trigger, Workflow
from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish
from tests.support.devserver import scripted_server
from tests.support.engine import drive
from tests.support.paging import assert_paging_refused, walk

CHAT_INPUT = {
    "type": "object",
    "properties": {
        "message": {"type": "string"},
        "history": {
            "type": "array",
            "items": {"type": "object", "properties": {"role": {"type": "string"}, "text": {"type": "string"}}},
        },
    },
    "required": ["message"],
}

# A stand-in for assistant.lookup's answer shape ({items, count, summary}) from a pure step.
MY_ITEMS: dict[str, Any] = {
    "name": "my_items",
    "description": "What waits for the person chatting.",
    "step": {
        "type": "data.transform",
        "config": {
            "fields": {
                "items": "[{'title': 'Claim A-17 water damage', 'queue': 'Adjusters'}, "
                "{'title': 'Claim B-4 stolen bike', 'queue': 'Adjusters'}]",
                "count": "2",
                "summary": "'2 items wait for you (ITEMS-LISTED)'",
            }
        },
    },
    "parameters": {"type": "object", "properties": {}},
}
SEND_REPLY: dict[str, Any] = {
    "name": "send_reply",
    "description": "Send a reply to the customer.",
    "step": {"type": "data.transform", "config": {"fields": {"sent": "'REPLY-SENT ' + params.note"}}},
    "parameters": {"type": "object", "properties": {"note": {"type": "string"}}, "required": ["note"]},
    "approval": "confirm",
}

RULES: list[dict[str, Any]] = [
    {"match": {"contains": ["CHAT-LIST", "ITEMS-LISTED"]}, "response": "Two items wait for you: A-17 and B-4."},
    {"match": {"contains": "CHAT-LIST"}, "response": {"tool_calls": [{"name": "my_items", "arguments": {}}]}},
    {"match": {"contains": ["CHAT-SEND", "declined it"]}, "response": "Nothing was sent."},
    {"match": {"contains": ["CHAT-SEND", "REPLY-SENT"]}, "response": "The reply is sent."},
    {
        "match": {"contains": "CHAT-SEND"},
        "response": {"tool_calls": [{"name": "send_reply", "arguments": {"note": "See you Monday"}}]},
    },
    {"match": {"contains": "CHAT-HELLO"}, "response": "Hello, how can I help today?"},
]


def chat_graph(tools: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "steps": [
            {
                "key": "answer",
                "type": "llm.agent",
                "name": "Answer",
                "config": {
                    "prompt": "{{ input.message }}",
                    "system": "You are the remote-work assistant.",
                    "tools": [MY_ITEMS, SEND_REPLY] if tools is None else tools,
                    "tool_protocol": "tools",
                },
            }
        ]
    }


def chat_workflow(analyst: Any, team: Any, *, name: str = "Remote-work chat") -> tuple[Workflow, Trigger]:
    """A published workflow taking {message, history} whose agent has a list tool and a confirm tool, and its
    chat trigger."""
    workflow = workflow_create(actor=analyst, name=name, team=team)
    version = workflow_version_create(actor=analyst, workflow=workflow, graph=chat_graph(), input_schema=CHAT_INPUT)
    workflow_version_publish(actor=analyst, version=version)
    trigger, _ = trigger_create(
        actor=analyst,
        workflow=workflow,
        kind="chat",
        name="Chat",
        config={"title": "Remote-work assistant", "greeting": "Ask me what is waiting for you."},
    )
    return workflow, trigger


@pytest.fixture
def endpoint(db: Any, settings: Any) -> Iterator[ModelEndpoint]:
    settings.AIOS_INFERENCE_RETRIES = 0
    with scripted_server(RULES) as url:
        yield ModelEndpoint.objects.create(
            name="main", kind="openai-compatible", url=url, is_default=True, price_input_per_1k=Decimal("0.5")
        )


@pytest.fixture
def chat(analyst: Any, team: Any) -> tuple[Workflow, Trigger]:
    return chat_workflow(analyst, team)


def answered(answer: ChatMessage) -> ChatMessage:
    """Run the answer's run to its end (or its next wait) here, and read the answer back."""
    assert answer.run is not None
    drive(answer.run)
    answer.refresh_from_db()
    chat_answer(answer)  # reading the answer fills its text once its run has succeeded
    return answer


# --- the chat trigger -----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_chat_trigger_needs_a_title_and_a_workflow_that_takes_a_message(analyst, team, claims_workflow):
    with pytest.raises(ValidationFailed) as refused:
        trigger_create(actor=analyst, workflow=claims_workflow, kind="chat", name="Chat", config={"title": "Claims"})
    assert "text field called “message”" in refused.value.fields["workflow"][0]

    workflow, _ = chat_workflow(analyst, team)
    with pytest.raises(ValidationFailed) as refused:
        trigger_create(actor=analyst, workflow=workflow, kind="chat", name="Chat 2", config={"greeting": "Hi"})
    assert refused.value.fields == {"title": ["Give the assistant a title, such as “Remote-work assistant”."]}

    unpublished = workflow_create(actor=analyst, name="Nothing yet", team=team)
    with pytest.raises(ValidationFailed) as refused:
        trigger_create(actor=analyst, workflow=unpublished, kind="chat", name="Chat", config={"title": "T"})
    assert "Publish “Nothing yet” first" in refused.value.fields["workflow"][0]

    history_as_text = workflow_create(actor=analyst, name="Text history", team=team)
    version = workflow_version_create(
        actor=analyst,
        workflow=history_as_text,
        graph=chat_graph([]),
        input_schema={"type": "object", "properties": {"message": {"type": "string"}, "history": {"type": "string"}}},
    )
    workflow_version_publish(actor=analyst, version=version)
    with pytest.raises(ValidationFailed) as refused:
        trigger_create(actor=analyst, workflow=history_as_text, kind="chat", name="Chat", config={"title": "T"})
    assert "“history” input must be a list" in refused.value.fields["workflow"][0]


@pytest.mark.django_db
def test_the_trigger_form_adds_a_chat_assistant_and_says_what_is_wrong(analyst, team, claims_workflow):
    workflow, _ = chat_workflow(analyst, team, name="Second chat")
    client = Client()
    client.force_login(analyst)
    page = client.get(f"/runs/triggers/{workflow.slug}/new/chat/")
    assert page.status_code == 200 and 'name="title"' in page.content.decode()
    assert 'name="inputs"' not in page.content.decode()  # a chat sends message and history, no mapping
    refused = client.post(f"/runs/triggers/{claims_workflow.slug}/new/chat/", {"name": "Chat", "title": "C"})
    assert refused.status_code == 400 and "text field called “message”" in refused.content.decode()
    added = client.post(
        f"/runs/triggers/{workflow.slug}/new/chat/", {"name": "Chat two", "title": "Helper", "greeting": "Hi"}
    )
    assert added.status_code == 302
    trigger = Trigger.objects.get(workflow=workflow, name="Chat two")
    assert trigger.kind == "chat" and trigger.config == {"title": "Helper", "greeting": "Hi"}


# --- conversations ---------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_message_runs_the_workflow_as_the_person_with_the_history(endpoint, chat, reviewer):
    workflow, trigger = chat
    session = chat_session_start(actor=reviewer, trigger=trigger)
    assert session.title == "Remote-work assistant" and session.user == reviewer

    first = answered(chat_message_send(actor=reviewer, session=session, text="CHAT-HELLO there"))
    run = Run.objects.get(pk=first.run_id)
    assert run.initiator == reviewer and run.trigger == "chat" and run.workflow == workflow
    assert run.inputs == {"message": "CHAT-HELLO there", "history": []}
    assert chat_answer(first).state == "answered"
    first.refresh_from_db()
    assert first.text == "Hello, how can I help today?"

    second = answered(chat_message_send(actor=reviewer, session=session, text="  CHAT-HELLO again  "))
    assert Run.objects.get(pk=second.run_id).inputs["history"] == [
        {"role": "user", "text": "CHAT-HELLO there"},
        {"role": "assistant", "text": "Hello, how can I help today?"},
    ]
    assert [(m.role, m.text) for m in session.messages.all()][2] == ("user", "CHAT-HELLO again")
    session.refresh_from_db()
    assert session.title == "CHAT-HELLO there"  # named by its first question
    verbs = list(AuditEvent.objects.filter(verb__startswith="chat.").values_list("verb", flat=True))
    assert verbs == ["chat.session_started", "chat.message_sent", "chat.message_sent"]


@pytest.mark.django_db
def test_the_history_is_the_last_twenty_messages_with_text(chat, reviewer):
    _, trigger = chat
    session = chat_session_start(actor=reviewer, trigger=trigger)
    for number in range(30):
        role = ChatMessage.Role.USER if number % 2 == 0 else ChatMessage.Role.ASSISTANT
        ChatMessage.objects.create(session=session, role=role, text=f"message {number}")
    ChatMessage.objects.create(session=session, role=ChatMessage.Role.ASSISTANT, text="")  # still being written
    history = chat_history(session)
    assert len(history) == HISTORY_LIMIT
    assert history[0] == {"role": "user", "text": "message 10"} and history[-1]["text"] == "message 29"


@pytest.mark.django_db
def test_bad_messages_are_refused_and_nothing_is_kept(chat, reviewer):
    _, trigger = chat
    session = chat_session_start(actor=reviewer, trigger=trigger)
    runs = Run.objects.count()
    too_long = "At most 4000 characters (this one has 4001)."
    for text, words in (("   ", "Write a message first."), ("x" * 4001, too_long)):
        with pytest.raises(ValidationFailed) as refused:
            chat_message_send(actor=reviewer, session=session, text=text)
        assert refused.value.fields == {"text": [words]}
    assert not session.messages.exists() and Run.objects.count() == runs
    # 4000 characters is allowed.
    assert chat_message_send(actor=reviewer, session=session, text="y" * 4000).run_id


@pytest.mark.django_db
def test_who_may_chat(chat, analyst, reviewer, manager, outsider, admin_user_role):
    _, trigger = chat
    # The manager sees the workflow but may not run it; the outsider does not see the assistant at all.
    with pytest.raises(Forbidden):
        chat_session_start(actor=manager, trigger=trigger)
    with pytest.raises(Http404):
        chat_trigger_get_for_user(outsider, trigger_id=trigger.pk)
    assert chat_trigger_get_for_user(reviewer, trigger_id=trigger.pk) == trigger
    # A conversation is its owner's alone, admins included.
    session = chat_session_start(actor=reviewer, trigger=trigger)
    for other in (analyst, admin_user_role):
        with pytest.raises(Http404):
            chat_message_send(actor=other, session=session, text="hello")
    # A paused assistant takes no messages.
    trigger_pause(actor=analyst, trigger=trigger)
    trigger.refresh_from_db()
    session.refresh_from_db()
    with pytest.raises(Conflict, match="is paused"):
        chat_message_send(actor=reviewer, session=session, text="hello")
    assert not session.messages.exists()


@pytest.mark.django_db
def test_an_answer_shows_its_tools_and_waits_for_her_confirmation(endpoint, chat, reviewer, analyst):
    _, trigger = chat
    session = chat_session_start(actor=reviewer, trigger=trigger)
    listed = answered(chat_message_send(actor=reviewer, session=session, text="CHAT-LIST what is waiting for me?"))
    answer = chat_answer(listed)
    assert answer.state == "answered" and listed.text == "Two items wait for you: A-17 and B-4."
    (use,) = answer.tools
    assert use.call.name == "my_items" and use.summary == "2 items wait for you (ITEMS-LISTED)"
    assert use.items is not None and use.items.columns == ["Title", "Queue"]
    assert [row.cells for row in use.items.rows] == [
        ["Claim A-17 water damage", "Adjusters"],
        ["Claim B-4 stolen bike", "Adjusters"],
    ]

    sending = answered(chat_message_send(actor=reviewer, session=session, text="CHAT-SEND reply to the customer"))
    answer = chat_answer(sending)
    assert answer.state == "pending" and answer.state_words == "Waits for you"
    (waiting,) = answer.awaiting
    assert waiting.call.input == {"note": "See you Monday"}

    client = Client()
    client.force_login(reviewer)
    page = client.get(f"/assistant/{session.pk}/").content.decode()
    assert "Claim A-17 water damage" in page and "Claim B-4 stolen bike" in page  # the items as a table
    assert "<table" in page and "See you Monday" in page and ">Confirm<" in page and ">Decline<" in page
    assert f'ws-connect="/ws/assistant/messages/{sending.pk}/"' in page
    assert f'href="/runs/{sending.run_id}/"' in page

    # Only she may answer: another person's POST is a 404, the call still waits.
    other = Client()
    other.force_login(analyst)
    assert other.post(f"/assistant/calls/{waiting.call.pk}/", {"answer": "confirm"}).status_code == 404
    declined = client.post(f"/assistant/calls/{waiting.call.pk}/", {"answer": "decline"})
    assert declined.status_code == 302 and declined["Location"].endswith(f"#chat-message-{sending.pk}")
    call = StepRun.objects.get(pk=waiting.call.pk)
    assert call.state == "failed" and "declined it" in call.error
    sending = answered(sending)
    assert sending.text == "Nothing was sent."
    # Answered twice: a readable refusal.
    again = client.post(f"/assistant/calls/{waiting.call.pk}/", {"answer": "confirm"}, follow=True)
    assert "This action was already answered." in again.content.decode()


@pytest.mark.django_db
def test_a_confirmed_call_runs(endpoint, chat, reviewer):
    _, trigger = chat
    session = chat_session_start(actor=reviewer, trigger=trigger)
    sending = answered(chat_message_send(actor=reviewer, session=session, text="CHAT-SEND now"))
    (waiting,) = chat_answer(sending).awaiting
    chat_call_answer(actor=reviewer, message=sending, call=waiting.call, confirmed=True)
    sending = answered(sending)
    assert sending.text == "The reply is sent."
    assert StepRun.objects.get(pk=waiting.call.pk).output == {"sent": "REPLY-SENT See you Monday"}


# --- pages ---------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_assistant_page_by_persona(chat, analyst, reviewer, manager, outsider):
    _, trigger = chat
    mine = chat_session_start(actor=reviewer, trigger=trigger)
    theirs = chat_session_start(actor=analyst, trigger=trigger)
    for persona, sees_assistant in ((reviewer, True), (analyst, True), (manager, False), (outsider, False)):
        client = Client()
        client.force_login(persona)
        page = client.get("/assistant/").content.decode()
        assert ("Remote-work assistant" in page and "New conversation" in page) is sees_assistant, persona
    client = Client()
    client.force_login(reviewer)
    page = client.get("/assistant/").content.decode()
    assert f"/assistant/{mine.pk}/" in page and f"/assistant/{theirs.pk}/" not in page
    assert client.get(f"/assistant/{theirs.pk}/").status_code == 404
    # Starting: whoever may run the workflow; the others may not know the assistant exists.
    started = client.post(f"/assistant/new/{trigger.pk}/")
    assert started.status_code == 302 and ChatSession.objects.filter(user=reviewer).count() == 2
    for persona in (manager, outsider):
        other = Client()
        other.force_login(persona)
        assert other.post(f"/assistant/new/{trigger.pk}/").status_code == 404
    assert client.get(f"/assistant/new/{trigger.pk}/").status_code == 405


@pytest.mark.django_db
def test_the_conversation_page_keeps_a_refused_message(chat, reviewer):
    _, trigger = chat
    session = chat_session_start(actor=reviewer, trigger=trigger)
    client = Client()
    client.force_login(reviewer)
    page = client.get(f"/assistant/{session.pk}/").content.decode()
    assert '<label for="chat-text">Your message</label>' in page and "Ask me what is waiting for you." in page
    assert "Enter sends; Shift+Enter starts a new line." in page and "<script>" not in page
    long = "z" * 4001
    refused = client.post(f"/assistant/{session.pk}/", {"text": long})
    assert refused.status_code == 400
    body = refused.content.decode()
    assert "At most 4000 characters" in body and long in body and 'aria-invalid="true"' in body
    sent = client.post(f"/assistant/{session.pk}/", {"text": "CHAT-HELLO"})
    answer = session.messages.get(role="assistant")
    assert sent.status_code == 302 and sent["Location"] == f"/assistant/{session.pk}/#chat-message-{answer.pk}"
    page = client.get(f"/assistant/{session.pk}/").content.decode()
    assert 'aria-live="polite"' in page and f'id="chat-stream-{answer.pk}"' in page and "(writing…)" in page


# --- API -----------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_api_mirrors_the_pages(endpoint, chat, reviewer, analyst, outsider):
    _, trigger = chat
    api = APIClient()
    api.force_authenticate(reviewer)
    assert [a["id"] for a in api.get("/api/assistant/").json()["results"]] == [trigger.pk]
    created = api.post("/api/assistant/sessions/", {"assistant": trigger.pk}, format="json")
    assert created.status_code == 201, created.json()
    session_id = created.json()["id"]
    assert api.get("/api/assistant/sessions/").json()["results"][0]["id"] == session_id

    refused = api.post(f"/api/assistant/sessions/{session_id}/messages/", {"text": ""}, format="json")
    assert refused.status_code == 400 and "text" in str(refused.json())
    posted = api.post(
        f"/api/assistant/sessions/{session_id}/messages/", {"text": "CHAT-SEND via the API"}, format="json"
    )
    assert posted.status_code == 201, posted.json()
    answer = posted.json()
    assert answer["role"] == "assistant" and answer["state"] == "pending" and answer["text"] == ""
    run = Run.objects.get(pk=answer["run"])
    assert run.initiator == reviewer and run.inputs["message"] == "CHAT-SEND via the API"
    drive(run)
    messages = api.get(f"/api/assistant/sessions/{session_id}/messages/").json()["results"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    (tool,) = messages[1]["tools"]
    assert tool["awaiting_confirmation"] and tool["arguments"] == {"note": "See you Monday"}

    # Someone else: the conversation and its call do not exist for her.
    other = APIClient()
    other.force_authenticate(analyst)
    assert other.get(f"/api/assistant/sessions/{session_id}/messages/").status_code == 404
    assert other.post(f"/api/assistant/calls/{tool['id']}/", {"confirmed": True}, format="json").status_code == 404
    stranger = APIClient()
    stranger.force_authenticate(outsider)
    assert stranger.get("/api/assistant/").json()["results"] == []
    assert stranger.post("/api/assistant/sessions/", {"assistant": trigger.pk}, format="json").status_code == 404

    confirmed = api.post(f"/api/assistant/calls/{tool['id']}/", {"confirmed": True}, format="json")
    assert confirmed.status_code == 200 and confirmed.json()["tools"][0]["state"] == "queued"
    assert api.post(f"/api/assistant/calls/{tool['id']}/", {"confirmed": False}, format="json").status_code == 409
    drive(run)
    final = api.get(f"/api/assistant/sessions/{session_id}/messages/").json()["results"][1]
    assert final["state"] == "answered" and final["text"] == "The reply is sent."


@pytest.mark.django_db
def test_the_apis_lists_are_paged_and_show_only_ones_own(analyst, reviewer, team):
    """L6: assistants, conversations (no longer cut at 200) and a conversation's messages are paged like every
    list; each walk gives every row once, and another person's conversations and messages appear on no page."""
    assistants = [chat_workflow(analyst, team, name=f"Chat {n}")[1] for n in range(3)]
    billing_analyst = user_create(username="bill", password="x-Unused-9", roles=["analyst"])
    _, other_team_trigger = chat_workflow(billing_analyst, team_create(name="Billing", members=[billing_analyst]))
    mine = [chat_session_start(actor=reviewer, trigger=assistants[n % 3]) for n in range(5)]
    theirs = [chat_session_start(actor=analyst, trigger=assistants[0]) for _ in range(2)]
    for n in range(5):  # messages written straight to the conversation: paging needs no model server
        ChatMessage.objects.create(session=mine[0], role="user", text=f"question {n}")
    ChatMessage.objects.create(session=theirs[0], role="user", text="not hers")
    api = APIClient()
    api.force_authenticate(reviewer)

    assert walk(api, "/api/assistant/", limit=2) == [t.pk for t in assistants]
    assert other_team_trigger.pk not in walk(api, "/api/assistant/", limit=100)
    sessions = walk(api, "/api/assistant/sessions/", limit=2)
    assert sorted(sessions) == sorted(s.pk for s in mine) and not set(sessions) & {s.pk for s in theirs}
    url = f"/api/assistant/sessions/{mine[0].pk}/messages/"
    expected = list(mine[0].messages.order_by("created_at", "pk").values_list("pk", flat=True))
    assert walk(api, url, limit=2) == expected and len(expected) == 5
    for address in ("/api/assistant/", "/api/assistant/sessions/", url):
        assert_paging_refused(api, address)
    assert api.get(f"/api/assistant/sessions/{theirs[0].pk}/messages/?limit=2").status_code == 404
    # More than the 200 the list used to stop at.
    ChatSession.objects.bulk_create(
        ChatSession(user=reviewer, trigger=assistants[0], workflow=assistants[0].workflow, title=f"old {n}")
        for n in range(200)
    )
    assert len(walk(api, "/api/assistant/sessions/", limit=100)) == 205
