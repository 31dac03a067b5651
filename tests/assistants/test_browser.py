"""In Chromium: the owner publishes a workflow as an MCP tool from its page, with the keyboard, after a refused
first try; the tools list, the tool's page and the API token page at desktop and phone width, without console
errors (CSP: no inline script or style) and without sideways scrolling on the phone. Screenshots land in
reports/screenshots/mcp-*.png."""

from __future__ import annotations

import pytest
from playwright.sync_api import Browser, expect

from apps.assistants.models import PublishedTool
from apps.assistants.services import workflow_tool_publish
from tests.assistants.test_mcp_endpoint import SCHEMA, publish
from tests.conftest import PASSWORD
from tests.e2e.conftest import SCREENSHOT_DIR, browser  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def sign_in(page, base: str, username: str) -> None:
    page.goto(f"{base}/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()


def shoot(page, name: str) -> None:
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT_DIR / f"mcp-{name}.png"), full_page=True)


def no_sideways_scroll(page) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"))


def test_mcp_pages_in_a_browser(asgi_server, analyst, team, browser: Browser):  # noqa: F811
    workflow = publish(analyst, team, "Claims triage", schema=SCHEMA)
    other = publish(analyst, team, "Invoice review", schema=SCHEMA)
    workflow_tool_publish(
        actor=analyst,
        workflow=other,
        name="review_invoice",
        description="Checks an invoice against the purchase order and policy; returns the decision and reasons.",
    )
    for width, label in ((1280, "desktop"), (390, "phone")):
        context = browser.new_context(viewport={"width": width, "height": 900})
        page = context.new_page()
        errors: list[str] = []
        page.on(
            "console", lambda message, errors=errors: errors.append(message.text) if message.type == "error" else None
        )
        sign_in(page, asgi_server, "ana")
        page.goto(f"{asgi_server}/workflows/{workflow.slug}/")
        if label == "desktop":
            page.get_by_role("link", name="MCP tool", exact=True).click()
            expect(page.get_by_role("heading", name="MCP tool", exact=True)).to_be_visible()
            # A name agents cannot use is refused in place, with what was typed kept.
            page.get_by_label("Tool name").fill("1st try")
            page.get_by_role("button", name="Publish as an MCP tool").click()
            expect(page.locator("#tool-name-error")).to_contain_text("starting with a letter")
            expect(page.get_by_label("Tool name")).to_have_attribute("aria-invalid", "true")
            shoot(page, f"publish-refused-{label}")
            assert errors == ["Failed to load resource: the server responded with a status of 400 (Bad Request)"]
            errors.clear()  # the refused form answers 400, as form errors do everywhere in AIOS
            page.get_by_label("Tool name").fill("triage_claim")
            page.get_by_label("Description for agents").fill("Triage an insurance claim: returns the route.")
            page.get_by_label("Description for agents").press("Tab")
            page.keyboard.press("Enter")  # the keyboard reaches and presses Publish
            expect(page.locator(".messages")).to_contain_text("offered to outside agents as triage_claim")
            assert PublishedTool.objects.filter(workflow=workflow, name="triage_claim").exists()
        else:
            page.goto(f"{asgi_server}/mcp-tools/workflow/{workflow.slug}/")
        expect(page.get_by_text("Offered", exact=True)).to_be_visible()
        shoot(page, f"tool-{label}")
        assert no_sideways_scroll(page), f"tool page scrolls sideways at {width}px"

        page.goto(f"{asgi_server}/mcp-tools/")
        expect(page.get_by_role("heading", name="Connect an agent")).to_be_visible()
        expect(page.locator("#mcp-endpoint")).to_have_text(f"{asgi_server}/mcp")
        expect(page.get_by_role("row", name="triage_claim")).to_contain_text("Yes")
        shoot(page, f"list-{label}")
        assert no_sideways_scroll(page), f"tools list scrolls sideways at {width}px"

        page.get_by_role("link", name="your API token page").click()
        page.get_by_label("Name").fill(f"Agent on the {label}")
        page.get_by_label("Expires after").select_option("90")
        page.get_by_role("button", name="Create a token").click()
        expect(page.get_by_text("Copy it now: it is not shown again.")).to_be_visible()
        shoot(page, f"token-{label}")
        assert no_sideways_scroll(page), f"token page scrolls sideways at {width}px"
        assert errors == [], errors
        context.close()
