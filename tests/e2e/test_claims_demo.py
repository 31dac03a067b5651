"""In Chromium: sign in as the analyst, run the claims demo, watch it complete live, save a screenshot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.conftest import PASSWORD
from tests.e2e.conftest import SCREENSHOT_DIR

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_analyst_runs_the_claims_demo_and_watches_it_live(paced_stack, analyst, claims_workflow, browser_page):
    # browser_page comes last: Playwright runs an event loop, and Django refuses database work inside one.
    page, errors = browser_page
    page.goto(f"{paced_stack}/")
    expect(page.get_by_role("heading", name="Sign in to AIOS")).to_be_visible()
    page.get_by_label("Username").fill("ana")
    page.get_by_label("Password").fill("wrong password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("do not match")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Welcome, Ana Analyst")).to_be_visible()
    expect(page.get_by_role("note")).to_contain_text("development inference server")

    page.get_by_role("link", name="Open workflows").click()
    page.get_by_role("link", name="Claims triage").click()
    expect(page.get_by_text("Extract claim fields", exact=True).first).to_be_visible()
    page.get_by_role("link", name="Run", exact=True).click()

    page.get_by_role("button", name="Start run").click()  # empty: inline error, nothing started
    expect(page.get_by_text("This field is required.")).to_be_visible()
    page.get_by_role("link", name="Slip and fall with injury").click()
    expect(page.get_by_label("Claim text")).to_have_value(re.compile("POL-31808"))
    page.get_by_role("button", name="Start run").click()

    page.wait_for_url(re.compile(r"/runs/\d+/$"))
    # Live, not on reload: the page first shows the run unfinished, then the socket moves it along.
    header = page.locator("#run-header")
    assert header.get_attribute("data-status") == "running"
    expect(page.locator("#step-extract")).to_have_attribute("data-state", "running", timeout=10_000)
    expect(page.locator("#step-extract-stream")).to_contain_text("claimant", timeout=10_000)
    assert page.locator("#step-extract").get_attribute("data-state") == "running"  # tokens before the end
    expect(header).to_have_attribute("data-status", "succeeded", timeout=60_000)
    expect(page.locator("#step-extract")).to_have_attribute("data-state", "succeeded")
    expect(page.locator("#step-decide")).to_have_attribute("data-state", "succeeded")
    expect(page.locator("#run-output")).to_contain_text("adjuster_queue")
    expect(page.locator("#step-extract-stream")).to_contain_text("Aisha Khan")
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT_DIR / "run-live.png"), full_page=True)

    page.reload()  # the same truth on reload
    expect(page.locator("#run-header")).to_have_attribute("data-status", "succeeded")
    expect(page.locator("#run-output")).to_contain_text("adjuster_queue")

    # Provenance beside the AI output: which model and revision, which prompt version, what it cost.
    provenance = page.locator("#step-extract-provenance")
    provenance.locator("summary").click()
    for label in ("Endpoint", "Model", "Revision", "Prompt version", "Parameters", "Tokens", "Cost", "Latency"):
        expect(provenance.get_by_text(label, exact=True)).to_be_visible()
    expect(provenance).to_contain_text("aios/dev-model")
    expect(provenance).to_contain_text("1 call")
    expect(page.locator("#step-decide-provenance")).to_have_count(0)  # not an AI step
    page.screenshot(path=str(SCREENSHOT_DIR / "run-provenance.png"), full_page=True)

    # Replay from the recordings: a new run, identical outputs, shown on the comparison page.
    page.get_by_role("button", name="Replay from recordings").click()
    expect(page.get_by_text(re.compile(r"Replay of run #\d+ from its recorded model calls"))).to_be_visible()
    expect(page.locator("#run-header")).to_have_attribute("data-status", "succeeded", timeout=60_000)
    page.get_by_role("link", name="Compare outputs").click()
    expect(page.locator("#diff-summary")).to_have_attribute("data-identical", "true")
    # The one failed load allowed is the deliberate invalid form post (answered 400 with inline errors).
    unexpected = [line for line in errors if line.startswith(("error:", "pageerror:")) and "status of 400" not in line]
    assert not unexpected, unexpected
    assert Path(SCREENSHOT_DIR / "run-live.png").stat().st_size > 10_000
