"""In Chromium: an analyst adds tools to an agent step with the keyboard and sees a tool's problem on the tool;
the run page shows an agent's turns and tool calls. Screenshots at desktop and phone widths."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from apps.knowledge.services import collection_create
from apps.workflows.services import workflow_create, workflow_draft_save
from tests.conftest import PASSWORD
from tests.connectors.helpers import make_connection
from tests.e2e.conftest import SCREENSHOT_DIR
from tests.runs.test_agent_run_page import agent_run

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.django_db(transaction=True)]

WIDTHS = {"desktop": 1280, "phone": 390}


def sign_in(page: Page, base: str) -> None:
    page.goto(f"{base}/accounts/login/")
    page.get_by_label("Username").fill("ana")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Welcome, Ana Analyst")).to_be_visible()


def shoot(page: Page, name: str, *, scroll_to: str = "") -> None:
    """Full-page screenshots at each width; with `scroll_to`, of the viewport with that element at its top (the
    builder's side panel scrolls on its own, so a full page shows only its start)."""
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    for label, width in WIDTHS.items():
        page.set_viewport_size({"width": width, "height": 900})
        if scroll_to:
            page.locator(scroll_to).evaluate("element => element.scrollIntoView({block: 'start'})")
        page.screenshot(path=str(SCREENSHOT_DIR / f"{name}-{label}.png"), full_page=not scroll_to)
    page.set_viewport_size({"width": 1280, "height": 900})


def test_tools_are_added_with_the_keyboard_and_an_agent_run_reads_as_turns(asgi_server, analyst, team, browser_page):
    from apps.approvals.services import approval_queue_create

    queue = approval_queue_create(
        actor=None, key="support", name="Support leads", team=team, workers=[analyst], users=[analyst]
    )
    make_connection(team, name="warehouse", kind="sql", label="Warehouse")
    collection_create(actor=analyst, name="handbook", title="Support handbook", team=team)
    workflow = workflow_create(actor=analyst, name="Support agent", team=team)
    agent = {
        "key": "agent",
        "type": "llm.agent",
        "name": "Resolve the ticket",
        "config": {"prompt": "Resolve this ticket: {{ input.ticket }}", "tools": []},
    }
    workflow_draft_save(
        actor=analyst,
        workflow=workflow,
        graph={"steps": [agent]},
        input_schema={"type": "object", "properties": {"ticket": {"type": "string"}}},
        expected_revision=None,
    )
    page, errors = browser_page
    sign_in(page, asgi_server)
    page.goto(f"{asgi_server}/workflows/{workflow.slug}/edit/?step=agent")
    expect(page.get_by_role("heading", name="Tools")).to_be_visible()

    # Keyboard only: choose a kind, then press Add tool.
    for kind in ("Knowledge search", "SQL query (read-only)"):
        page.get_by_label("Kind of tool").select_option(label=kind)
        page.get_by_label("Kind of tool").focus()
        page.keyboard.press("Tab")
        expect(page.get_by_role("button", name="Add tool")).to_be_focused()
        with page.expect_response(lambda response: "/edit/steps/" in response.url):
            page.keyboard.press("Enter")
        page.wait_for_load_state("networkidle")
    expect(page.locator("#tool-1 > legend")).to_contain_text("query_database")
    page.get_by_label("Support handbook (handbook)").check()
    page.locator("#tool-1").get_by_label("Connection").select_option("warehouse")
    page.locator("#tool-1").get_by_label("SQL statement").fill("SELECT status FROM orders WHERE id = :order_id")
    # The approval queue is asked for only when each call is asked first.
    expect(page.locator("#tool-1").get_by_label("Approval queue")).to_be_hidden()
    page.locator("#tool-1").get_by_label("Each call").select_option("ask")
    expect(page.locator("#tool-1").get_by_label("Approval queue")).to_be_visible()
    # Enter in a text field saves the step (not the first tool button of the form).
    page.locator("#tool-0").get_by_label("What it does").press("Enter")
    page.wait_for_load_state("networkidle")
    # The SQL tool asks first without a queue: the problem is on the tool; its argument came from the statement.
    expect(page.locator("#tool-1")).to_contain_text("choose the queue that decides the calls")
    expect(page.locator("#tool-0").get_by_label("Approval queue")).to_be_hidden()
    expect(page.locator("#tool-1 input[name='config.tools.1.parameters.0.name']")).to_have_value("order_id")
    assert page.locator("fieldset.agent-tool").count() == 2
    shoot(page, "agent-builder", scroll_to="#agent-tools-title")
    shoot(page, "agent-builder-tool", scroll_to="#tool-1")

    from apps.approvals.models import ApprovalRequest
    from apps.runs.models import StepRun

    run = agent_run(analyst, team)
    waiting = StepRun.objects.get(run=run, step_key="agent~3")
    ApprovalRequest.objects.create(step_run=waiting, run=run, queue=queue, title="Post a note on ticket 42?")
    page.goto(f"{asgi_server}/runs/{run.pk}/")
    expect(page.get_by_role("heading", name="Turns")).to_be_visible()
    expect(page.locator(".tool-call")).to_have_count(3)
    expect(page.locator(".tool-call--rejected .badge")).to_have_text("rejected")
    expect(page.locator(".tool-call--waiting .step-note a")).to_contain_text("Open the item")
    page.locator(".agent-turn details.provenance").first.locator("summary").click()
    shoot(page, "agent-run")
    assert not [e for e in errors if e.startswith(("pageerror", "error"))], errors
