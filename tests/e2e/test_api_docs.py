"""In Chromium: the API docs page (Swagger UI) renders the operations under our strict CSP."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.conftest import PASSWORD
from tests.e2e.conftest import SCREENSHOT_DIR

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_api_docs_render_the_operations_without_csp_violations(asgi_server, analyst, browser_page):
    # browser_page comes last: Playwright runs an event loop, and Django refuses database work inside one.
    page, console = browser_page
    # The docs are an API view: signed out they answer 403 rather than redirect, so sign in first.
    page.goto(f"{asgi_server}/accounts/login/?next=/api/docs/")
    expect(page.get_by_role("heading", name="Sign in to AIOS")).to_be_visible()
    page.get_by_label("Username").fill("ana")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()

    page.wait_for_url(f"{asgi_server}/api/docs/")
    expect(page.locator("#swagger-ui .information-container")).to_contain_text("AIOS API", timeout=20_000)
    expect(page.locator(".opblock-summary-path", has_text="/api/runs/").first).to_be_visible()
    expect(page.locator(".opblock-summary-path", has_text="/api/workflows/").first).to_be_visible()

    # Expand one operation and call it: the reply is rendered (highlighted JSON) under the same policy.
    operation = page.locator("#operations-runs-runs_list")
    operation.locator(".opblock-summary").click()
    operation.get_by_role("button", name="Try it out").click()
    operation.get_by_role("button", name="Execute").click()
    expect(operation.locator(".live-responses-table tbody .response-col_status")).to_contain_text("200")
    expect(operation.locator(".live-responses-table")).to_contain_text('"results"')
    refusals = [
        line
        for line in console
        if line.startswith(("error:", "pageerror:")) or "Content Security Policy" in line or "Refused" in line
    ]
    assert not refusals, refusals
    # The page's own stylesheet (moved out of an inline <style>) is applied.
    assert page.evaluate("getComputedStyle(document.body).marginTop") == "0px"
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT_DIR / "api-docs.png"), full_page=False)
