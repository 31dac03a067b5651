"""In Chromium: a reviewer with two real pending approval items asks her assistant "what is waiting for me?",
watches the answer stream in (a partial answer first, the final one after), and reads her two items' titles in
the lookup's table; a second request waits for her confirmation with Confirm and Decline. Screenshots of the
Assistant page and the conversation at desktop and phone widths.

The model is a development server of this test's own, scripted and slow (300 ms to the first token, 40 ms a
token) so the stream is observable; the default model endpoint points at it. Everything else is the real stack:
the ASGI server, a Celery worker process, PostgreSQL and Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from apps.approvals.models import ApprovalRequest
from apps.inference.models import ModelEndpoint
from apps.runs.services import run_start
from apps.runs.triggers import trigger_create
from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish
from tests.assistants.test_chat import CHAT_INPUT
from tests.conftest import PASSWORD
from tests.e2e.conftest import SCREENSHOT_DIR
from tests.support.devserver import scripted_server

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.django_db(transaction=True)]

WIDTHS = {"desktop": 1280, "phone": 390}
TITLES = ("Claim A-17 water damage", "Refund for order 5521")
ANSWER = (
    "Two items wait for your decision in the Claims queue: the water damage claim A-17 and the refund for "
    "order 5521. The claim has waited longest, so I would start there."
)
RULES: list[dict[str, Any]] = [
    {"match": {"contains": ["draft a reply", "declined it"]}, "response": "Nothing was sent."},
    {
        "match": {"contains": "draft a reply"},
        "response": {
            "tool_calls": [
                {
                    "name": "draft_reply",
                    "arguments": {"to": "claimant A-17", "text": "We are reviewing your claim and reply by Friday."},
                }
            ]
        },
    },
    {"match": {"contains": ["what is waiting", "waiting for you to decide"]}, "response": ANSWER},
    {"match": {"contains": "what is waiting"}, "response": {"tool_calls": [{"name": "my_approvals", "arguments": {}}]}},
]

TOOLS: list[dict[str, Any]] = [
    {
        "name": "my_approvals",
        "description": "The approval items waiting for the person chatting, oldest first.",
        "step": {"type": "assistant.lookup", "config": {"what": "my_approvals"}},
        "parameters": {"type": "object", "properties": {}},
    },
    {
        "name": "draft_reply",
        "description": "Send a short reply; the person confirms it first.",
        "step": {"type": "data.transform", "config": {"fields": {"sent": "params.text"}}},
        "parameters": {
            "type": "object",
            "properties": {"to": {"type": "string"}, "text": {"type": "string"}},
            "required": ["to", "text"],
        },
        "approval": "confirm",
    },
]


@pytest.fixture
def slow_model(transactional_db: Any) -> Iterator[ModelEndpoint]:
    with scripted_server(RULES, ttft_ms=300, tpot_ms=40) as url:
        yield ModelEndpoint.objects.create(
            name="main", kind="openai-compatible", url=url, is_default=True, price_input_per_1k=Decimal("0.5")
        )


def publish(analyst: Any, team: Any, name: str, graph: dict[str, Any], schema: dict[str, Any]) -> Any:
    workflow = workflow_create(actor=analyst, name=name, team=team)
    version = workflow_version_create(actor=analyst, workflow=workflow, graph=graph, input_schema=schema)
    workflow_version_publish(actor=analyst, version=version)
    return workflow


def two_pending_items(analyst: Any, team: Any) -> None:
    """Two real items in the team's queue (the reviewer works it): runs of an approval workflow, parked."""
    graph = {
        "steps": [
            {
                "key": "review",
                "type": "human.approval",
                "config": {"queue": team.group.name, "title": "{{ input.what }}"},
            }
        ]
    }
    schema = {"type": "object", "properties": {"what": {"type": "string"}}, "required": ["what"]}
    workflow = publish(analyst, team, "Claims review", graph, schema)
    for title in TITLES:
        run_start(actor=analyst, workflow=workflow, inputs={"what": title})
        time.sleep(0.05)  # the oldest first, as the lookup lists them
    deadline = time.monotonic() + 30
    while ApprovalRequest.objects.filter(run__workflow=workflow).count() < 2:
        assert time.monotonic() < deadline, "the approval items were not created"
        time.sleep(0.2)


def shoot(page: Page, name: str) -> None:
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    for label, width in WIDTHS.items():
        page.set_viewport_size({"width": width, "height": 900})
        page.screenshot(path=str(SCREENSHOT_DIR / f"{name}-{label}.png"), full_page=True)
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"{name} at {width} px scrolls sideways by {overflow} px"
    page.set_viewport_size({"width": 1280, "height": 900})


def test_the_reviewer_asks_what_is_waiting_and_sees_her_items_stream_in(
    asgi_server, celery_worker_process, slow_model, analyst, reviewer, team, browser_page
):
    two_pending_items(analyst, team)
    graph = {
        "steps": [
            {
                "key": "answer",
                "type": "llm.agent",
                "name": "Answer",
                "config": {"prompt": "{{ input.message }}", "tools": TOOLS, "tool_protocol": "tools"},
            }
        ]
    }
    workflow = publish(analyst, team, "Remote-work assistant", graph, CHAT_INPUT)
    trigger_create(
        actor=analyst,
        workflow=workflow,
        kind="chat",
        name="Chat",
        config={"title": "Remote-work assistant", "greeting": "Ask me what is waiting for you."},
    )

    page, errors = browser_page
    page.goto(f"{asgi_server}/accounts/login/")
    page.get_by_label("Username").fill("rita")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_label("Main").get_by_role("link", name="Assistant", exact=True).click()
    expect(page.get_by_role("heading", name="Assistant", exact=True)).to_be_visible()
    expect(page.get_by_role("heading", name="Remote-work assistant")).to_be_visible()
    shoot(page, "chat-index-empty")

    # Keyboard: focus New conversation and press Enter.
    page.get_by_role("button", name="New conversation with Remote-work assistant").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_text("Ask me what is waiting for you.")).to_be_visible()
    composer = page.get_by_label("Your message")
    expect(composer).to_be_focused()
    # Shift+Enter is a new line, not a send.
    composer.type("what is waiting")
    composer.press("Shift+Enter")
    composer.type("for me?")
    expect(composer).to_have_value("what is waiting\nfor me?")
    composer.fill("what is waiting for me?")
    composer.press("Enter")

    answer = page.locator(".chat-message--assistant").last
    stream = answer.locator("[id^='chat-stream-']")
    live = answer.locator("[aria-live='polite']")
    # A partial answer first: some of the words are in, the message is not answered yet.
    expect(stream).to_contain_text("Two items wait", timeout=30_000)
    partial = stream.inner_text()
    assert partial and len(partial) < len(ANSWER), partial
    expect(answer.locator(".badge").first).to_have_text("Answering")
    # Then the final answer replaces it, with her two items in the lookup's table.
    expect(page.locator(".chat-message--answered")).to_have_count(1, timeout=30_000)
    answered = page.locator(".chat-message--answered")
    expect(answered.locator("[aria-live='polite']")).to_contain_text("so I would start there.")
    table = answered.locator("table.chat-items")
    for title in TITLES:
        expect(table.get_by_role("link", name=title)).to_be_visible()
    expect(answered.get_by_role("link", name="View the run that wrote this answer")).to_be_visible()
    assert live.count() <= 1

    # A second request waits for her confirmation, with what it will do as a table.
    composer = page.get_by_label("Your message")
    composer.fill("Please draft a reply to the oldest")
    composer.press("Enter")
    confirm = page.get_by_role("button", name="Confirm draft_reply")
    expect(confirm).to_be_visible(timeout=30_000)
    waiting = page.locator(".chat-message--assistant").last
    expect(waiting.locator(".chat-confirm")).to_contain_text("We are reviewing your claim and reply by Friday.")
    expect(waiting.locator(".badge").first).to_have_text("Waits for you")
    shoot(page, "chat-conversation")

    page.get_by_role("button", name="Decline draft_reply").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_text("draft_reply declined: the assistant is told so.")).to_be_visible()
    expect(page.locator(".chat-message--answered")).to_have_count(2, timeout=30_000)
    expect(page.locator(".chat-message--answered").last).to_contain_text("Nothing was sent.")

    page.get_by_label("Main").get_by_role("link", name="Assistant", exact=True).click()
    expect(page.get_by_role("link", name="what is waiting for me?")).to_be_visible()
    shoot(page, "chat-index")
    assert not [e for e in errors if e.startswith(("pageerror", "error"))], errors
