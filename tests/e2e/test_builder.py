"""In Chromium: an analyst who has never seen AIOS builds a claims triage from a blank workflow, tests the
extraction on a sample, fixes the problem the builder points at, publishes with a note, runs it up to the
approval, publishes a second version and compares the two. A second test moves a step into a branch with the
keyboard alone."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from apps.workflows.demo import SAMPLE_CLAIMS
from tests.conftest import PASSWORD
from tests.e2e.conftest import SCREENSHOT_DIR

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.django_db(transaction=True)]

DOCS = SCREENSHOT_DIR


def sign_in(page: Page, base: str) -> None:
    page.goto(f"{base}/accounts/login/")
    page.get_by_label("Username").fill("ana")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Welcome, Ana Analyst")).to_be_visible()


def add_step(page: Page, where: str, search: str, name: str) -> None:
    """Open the palette at an insert point, search, and pick a step type."""
    page.locator(f'a.insert-link[href*="insert={where}"]').first.click()
    page.get_by_label("Search step types").fill(search)
    page.get_by_role("button", name="Search").click()
    with page.expect_response(lambda response: "/edit/operation/" in response.url):
        page.get_by_role("button", name=re.compile(f"^{name}")).click()
    expect(page.get_by_role("status")).to_contain_text("Added")


def save_step(page: Page) -> None:
    # The save answers with the builder itself (htmx): wait for it before touching the page again.
    with page.expect_response(lambda response: "/edit/steps/" in response.url):
        page.get_by_role("button", name="Save step").click()
    page.wait_for_load_state("networkidle")


def test_analyst_builds_tests_publishes_runs_and_compares_a_claims_triage(
    paced_stack, analyst, team, reviewer, browser_page
):
    page, errors = browser_page
    sign_in(page, paced_stack)

    # A blank workflow.
    page.get_by_role("link", name="Workflows", exact=True).click()
    page.get_by_role("link", name="New workflow").click()
    page.get_by_label("Blank workflow").check()
    page.get_by_label("Name", exact=True).fill("Claims intake")
    page.get_by_label("Team", exact=True).select_option(label="Claims")
    page.get_by_role("button", name="Create and open the builder").click()
    expect(page.get_by_role("heading", name="Edit Claims intake")).to_be_visible()
    expect(page.get_by_text("This workflow has no steps yet.")).to_be_visible()

    # The run form: one long-text field, previewed, and two saved samples.
    page.get_by_role("link", name="Run form", exact=True).click()
    page.locator("#row-0-name").fill("claim_text")
    page.locator("#row-0-label").fill("Claim text")
    page.locator("#row-0-kind").select_option(label="Long text")
    page.locator("#row-0-required").check()
    page.get_by_role("button", name="Save the run form").click()
    expect(page.get_by_role("heading", name="Preview: what a person sees")).to_be_visible()
    for sample in (SAMPLE_CLAIMS[0], SAMPLE_CLAIMS[1]):
        page.get_by_label("Claim text").fill(sample["claim_text"])
        page.get_by_label("Sample name").fill(sample["label"])
        page.get_by_role("button", name="Save these values as a sample").click()
        expect(page.locator(".sample-list")).to_contain_text(sample["label"])

    # An extraction with its fields as a table, its prompt written with the data picker.
    add_step(page, "root:0", "extract", "Extract data")
    prompt = page.locator("#field-config-prompt")
    prompt.fill("Extract the claimant, the amount and whether anyone was injured from this claim:\n")
    prompt.press("End")
    page.locator("#field-config-prompt ~ details.picker > summary").click()
    page.locator("#field-config-prompt ~ details.picker").get_by_role("button", name=re.compile("Claim text")).click()
    expect(prompt).to_have_value(re.compile(r"\{\{ input\.claim_text \}\}$"))
    for index, (name, kind) in enumerate([("claimant", "Text"), ("amount", "Number"), ("injury_reported", "Yes / no")]):
        page.get_by_label(f"Field {index + 1}: name").fill(name)
        page.get_by_label(f"Field {index + 1}: type").select_option(label=kind)
        page.get_by_label(f"Field {index + 1}: required").check()
    page.get_by_label("Name", exact=True).fill("Extract claim fields")
    save_step(page)
    expect(page.locator("#card-extract")).to_contain_text("Extract 3 fields")
    DOCS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(DOCS / "builder-extraction.png"), full_page=True)

    # A condition typed wrong: the builder points at it, under the field and in the problems list.
    add_step(page, "root:1", "if", "If")
    condition = page.locator("#field-config-condition")
    condition.fill("steps.extract.data.amount >")
    expect(page.locator("#field-config-condition-check")).to_contain_text("Does not parse")  # checked as typed
    save_step(page)
    expect(page.locator("#problems")).to_contain_text("condition")
    expect(page.get_by_role("button", name="Publish version 1")).to_be_disabled()
    expect(page.locator(".step-card--problems")).to_have_count(1)
    page.locator("#problems a").first.click()
    condition = page.locator("#field-config-condition")
    condition.fill("")
    page.locator("#field-config-condition ~ details.picker > summary").click()
    page.locator("#field-config-condition ~ details.picker").get_by_role("button", name=re.compile("amount")).click()
    condition.press("End")
    condition.type(" > 1000.0")
    expect(page.locator("#field-config-condition-check")).to_contain_text("Looks right")
    page.get_by_label("Name", exact=True).fill("Needs an adjuster?")
    save_step(page)
    expect(page.locator("#problems")).to_contain_text("No problems")

    # An adjuster's approval on one branch, a data step on the other.
    add_step(page, "check/branch/true:0", "approval", "Human approval")
    page.get_by_role("combobox", name="Queue (required)").select_option("team:claims")  # the queues Ana may use
    page.get_by_label("Name", exact=True).fill("Adjuster review")
    save_step(page)
    add_step(page, "check/branch/false:0", "transform", "Transform data")
    page.get_by_label("Fields 1: name").fill("decision")
    page.get_by_label("Fields 1: expression").fill('"approved automatically"')
    page.get_by_label("Name", exact=True).fill("Approve automatically")
    save_step(page)
    expect(page.locator("#problems")).to_contain_text("No problems")
    page.screenshot(path=str(DOCS / "builder-editor.png"), full_page=True)

    # Test the extraction alone on a sample: the real engine, the live run page, marked as a test.
    page.get_by_role("link", name="Extract claim fields", exact=True).click()
    page.locator("#test-step-source").select_option(label=f"Sample: {SAMPLE_CLAIMS[0]['label']}")
    page.get_by_role("button", name="Test this step").click()
    page.wait_for_url(re.compile(r"/runs/\d+/$"))
    expect(page.locator("#run-header")).to_have_attribute("data-status", "succeeded", timeout=60_000)
    expect(page.locator("#step-extract")).to_contain_text("Maria Lopez")
    page.go_back()

    # Publish with a note.
    page.get_by_label("What changed (shown in the version list)").fill(
        "First version: adjusters review claims over EUR 1,000"
    )
    page.get_by_role("button", name="Publish version 1").click()
    expect(page.get_by_role("heading", name="Versions")).to_be_visible()
    expect(page.locator("tbody")).to_contain_text("adjusters review claims over EUR 1,000")
    expect(page.locator("tbody")).to_contain_text("Live")

    # Run it with the large claim: it reaches the adjuster's approval and waits.
    page.get_by_role("link", name="Claims intake").click()
    expect(page.get_by_role("heading", name="Step by step")).to_be_visible()
    page.get_by_role("link", name="Run", exact=True).click()
    page.get_by_role("link", name=SAMPLE_CLAIMS[1]["label"]).click()
    page.get_by_role("button", name="Start run").click()
    page.wait_for_url(re.compile(r"/runs/\d+/$"))
    expect(page.locator("#step-approval")).to_have_attribute("data-state", "waiting", timeout=60_000)
    expect(page.locator("#step-transform")).to_have_attribute("data-state", "skipped")

    # A second version: a higher limit. Then the difference between the two.
    page.goto(f"{paced_stack}/workflows/claims-intake/edit/")
    page.get_by_role("link", name="Needs an adjuster?", exact=True).click()
    page.locator("#field-config-condition").fill("steps.extract.data.amount > 5000.0")
    save_step(page)
    page.get_by_label("What changed (shown in the version list)").fill("Raise the limit to EUR 5,000")
    page.get_by_role("button", name="Publish version 2").click()
    page.get_by_role("link", name="Changes from v1").click()
    expect(page.get_by_role("heading", name="v1 → v2")).to_be_visible()
    expect(page.locator(".diff-summary")).to_contain_text("1 step changed")
    expect(page.locator(".diff-table")).to_contain_text("config.condition")
    expect(page.locator(".diff-table")).to_contain_text("> 1000.0")
    expect(page.locator(".diff-table")).to_contain_text("> 5000.0")
    page.screenshot(path=str(DOCS / "builder-diff.png"), full_page=True)
    unexpected = [line for line in errors if line.startswith(("error:", "pageerror:")) and "status of 400" not in line]
    assert not unexpected, unexpected


def check_then_after(analyst, team, name: str) -> None:
    """A draft with an If whose two branches are empty, and a step "After" below it."""
    from apps.workflows.services import workflow_create, workflow_draft_save

    workflow = workflow_create(actor=analyst, name=name, team=team)
    workflow_draft_save(
        actor=analyst,
        workflow=workflow,
        graph={
            "steps": [
                {"key": "check", "type": "logic.if", "name": "Check", "config": {"condition": "true"}},
                {"key": "after", "type": "data.transform", "name": "After", "config": {"fields": {"n": "1"}}},
            ],
            "edges": [
                {"from": "check", "to": "after", "when": "true"},
                {"from": "check", "to": "after", "when": "false"},
            ],
        },
        input_schema={"type": "object", "properties": {}},
        expected_revision=None,
    )


def test_a_step_moves_into_a_branch_with_the_keyboard_alone(paced_stack, analyst, team, browser_page):
    check_then_after(analyst, team, "Keyboard flow")
    page, errors = browser_page
    sign_in(page, paced_stack)
    page.goto(f"{paced_stack}/workflows/keyboard-flow/edit/")
    expect(page.locator('ol[data-lane="check/branch/true"] #card-after')).to_have_count(0)
    # The card's "Move to…" opens the move panel with its choice focused; the arrow keys pick the branch.
    page.locator("#card-after a[data-control=moveto]").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#move-to-lane")).to_be_focused()
    page.keyboard.press("ArrowDown")
    expect(page.locator("#move-to-lane")).to_have_value("check/branch/true")
    page.keyboard.press("Tab")  # "Where in it": at the end
    page.keyboard.press("Tab")
    with page.expect_response(lambda response: "/edit/operation/" in response.url):
        page.keyboard.press("Enter")
    expect(page.locator('ol[data-lane="check/branch/true"] #card-after')).to_have_count(1)
    expect(page.get_by_role("status")).to_contain_text('Moved "After" to "true" branch of Check')
    # Focus comes back to the same control of the moved card, so the next key press continues the work.
    expect(page.locator("#card-after a[data-control=moveto]")).to_be_focused()
    # And out again, with Up: the first step of a branch steps out, before the If.
    page.locator("#card-after button[data-control=up]").focus()
    with page.expect_response(lambda response: "/edit/operation/" in response.url):
        page.keyboard.press("Enter")
    expect(page.locator('ol[data-lane="root"] > #card-after')).to_have_count(1)
    # Now first, it cannot go further up: focus lands on its name, which says where it is.
    expect(page.locator("#card-after h3 a")).to_be_focused()
    unexpected = [line for line in errors if line.startswith(("error:", "pageerror:"))]
    assert not unexpected, unexpected


def test_dragging_a_card_by_its_handle_moves_it_as_the_menu_would(paced_stack, analyst, team, browser_page):
    check_then_after(analyst, team, "Drag flow")
    page, errors = browser_page
    sign_in(page, paced_stack)
    page.goto(f"{paced_stack}/workflows/drag-flow/edit/")
    expect(page.locator("#builder")).to_have_class(re.compile("builder--draggable"))  # SortableJS from npm is on
    handle = page.locator("#card-after .drag-handle").bounding_box()
    target = page.locator('ol[data-lane="check/branch/false"] .insert-point').first.bounding_box()
    assert handle and target
    page.mouse.move(handle["x"] + 5, handle["y"] + 5)
    page.mouse.down()
    for step in range(1, 21):  # Sortable follows the pointer in small moves, as a hand would
        page.mouse.move(
            handle["x"] + 5 + (target["x"] + 20 - handle["x"]) * step / 20,
            handle["y"] + 5 + (target["y"] + 2 - handle["y"]) * step / 20,
        )
        page.wait_for_timeout(30)
    with page.expect_navigation():
        page.mouse.up()
    expect(page.locator('ol[data-lane="check/branch/false"] #card-after')).to_have_count(1)
    expect(page.get_by_role("status")).to_contain_text('Moved "After" to "false" branch of Check')
    unexpected = [line for line in errors if line.startswith(("error:", "pageerror:"))]
    assert not unexpected, unexpected
