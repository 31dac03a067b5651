"""In Chromium: an analyst describes an expense process on New workflow, the model (the development server's
scripted answer) drafts it, she reviews the proposal with every step explained, accepts it, lands in the builder
and publishes version 1. A second test: a description that yields no valid workflow shows its problems beside
the field, keeps the text, and creates nothing. Screenshots at 1280 and 390 px go to reports/screenshots/."""

from __future__ import annotations

import pytest
from playwright.sync_api import Browser, Page, expect

from apps.workflows.models import DraftProposal, Workflow, WorkflowVersion
from tests.conftest import PASSWORD
from tests.e2e.conftest import SCREENSHOT_DIR
from tests.workflows.test_drafting import EXPENSES, WEATHER

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def sign_in(page: Page, base: str) -> None:
    page.goto(f"{base}/accounts/login/")
    page.get_by_label("Username").fill("ana")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Welcome, Ana Analyst")).to_be_visible()


def test_a_description_becomes_a_draft_that_publishes(asgi_server, analyst, team, browser_page):
    page, console = browser_page
    sign_in(page, asgi_server)

    page.get_by_role("link", name="Workflows", exact=True).click()
    page.get_by_role("link", name="New workflow").click()
    expect(page.get_by_role("heading", name="Describe the process")).to_be_visible()
    page.get_by_label("Process description").fill(EXPENSES)
    page.get_by_label("Team of the drafted workflow").select_option(label="Claims")
    page.screenshot(path=str(SCREENSHOT_DIR / "draft-describe-1280.png"), full_page=True)
    # From the keyboard: the Draft button is the next control after the model's select.
    page.get_by_label("Model that drafts").focus()
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Draft", exact=True)).to_be_focused()
    page.keyboard.press("Enter")

    # The proposal: summary, diagram, each step with its type and the model's explanation, as added steps.
    expect(page.get_by_role("heading", name="Draft: Expense approval")).to_be_visible(timeout=60_000)
    proposal = DraftProposal.objects.get()
    expect(page.locator(".draft-summary")).to_contain_text("Reads each expense claim")
    expect(page.get_by_text("5 steps added", exact=False)).to_be_visible()
    steps = page.locator(".draft-step")
    expect(steps).to_have_count(5)
    for key, explanation in proposal.explanations.items():
        expect(page.locator(f"#step-{key} .draft-explanation")).to_contain_text(explanation)
    expect(page.locator("#step-approval")).to_contain_text("Human approval")
    expect(page.locator("#step-approval")).to_contain_text("team:claims")
    expect(page.locator("#step-approval")).to_contain_text('on the "false" branch of "small_amount"')
    expect(page.locator("svg.diagram-svg")).to_be_visible()
    page.screenshot(path=str(SCREENSHOT_DIR / "draft-proposal-1280.png"), full_page=True)

    # Accept: the workflow exists with the drafted steps as its draft, and the builder opens.
    page.get_by_role("button", name="Accept and open the builder").click()
    expect(page.get_by_role("heading", name="Edit Expense approval")).to_be_visible()
    expect(page.locator("#problems")).to_contain_text("No problems")

    # Publish it.
    page.get_by_label("What changed (shown in the version list)").fill("Drafted from a description")
    page.get_by_role("button", name="Publish version 1").click()
    expect(page.get_by_role("heading", name="Versions")).to_be_visible()
    expect(page.locator("tbody")).to_contain_text("Drafted from a description")
    expect(page.locator("tbody")).to_contain_text("Live")

    workflow = Workflow.objects.get(slug="expense-approval")
    assert workflow.versions.get(number=1).state == WorkflowVersion.State.PUBLISHED
    proposal.refresh_from_db()
    assert proposal.state == DraftProposal.State.ACCEPTED and proposal.workflow == workflow
    assert not [line for line in console if line.startswith(("error", "pageerror"))], console


def test_a_description_without_a_valid_workflow_shows_what_was_wrong(asgi_server, analyst, team, browser: Browser):
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    try:
        sign_in(page, asgi_server)
        page.goto(f"{asgi_server}/workflows/new/")
        page.screenshot(path=str(SCREENSHOT_DIR / "draft-describe-390.png"), full_page=True)
        page.get_by_label("Process description").fill(WEATHER)
        page.get_by_role("button", name="Draft", exact=True).click()
        errors = page.locator("#draft-description-errors")
        expect(errors).to_contain_text("This description did not give a valid workflow", timeout=60_000)
        expect(errors.locator(".draft-problems li").first).to_be_visible()
        expect(page.get_by_role("alert")).to_contain_text("nothing was created")
        expect(page.get_by_label("Process description")).to_have_value(WEATHER)
        expect(page.get_by_label("Process description")).to_have_attribute("aria-invalid", "true")
        page.screenshot(path=str(SCREENSHOT_DIR / "draft-refused-390.png"), full_page=True)
        assert not DraftProposal.objects.exists() and not Workflow.objects.exists()

        # The expense description then drafts fine at this width too.
        page.get_by_label("Process description").fill(EXPENSES)
        page.get_by_label("Team of the drafted workflow").select_option(label="Claims")
        page.get_by_role("button", name="Draft", exact=True).click()
        expect(page.get_by_role("heading", name="Draft: Expense approval")).to_be_visible(timeout=60_000)
        page.screenshot(path=str(SCREENSHOT_DIR / "draft-proposal-390.png"), full_page=True)
        # Edit description: back to the form with the text kept.
        page.get_by_role("link", name="Edit description").click()
        expect(page.get_by_label("Process description")).to_have_value(EXPENSES)
    finally:
        context.close()
