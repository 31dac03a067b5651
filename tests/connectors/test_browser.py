"""The connection pages in Chromium, against the real ASGI server: an admin creates an HTTP connection, the form
shows only the chosen authentication's fields, "Test connection" answers inline (after a visible progress
note) against a local API, saving lands on the connection's page with its history; an analyst reads the same
connection without its form. Screenshots at 1280 and 390 pixels go to reports/screenshots/."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, expect, sync_playwright

from apps.connectors.models import Connection
from tests.conftest import PASSWORD
from tests.connectors.helpers import finance_team, make_connection
from tests.connectors.servers import ApiServer
from tests.support.processes import REPO, asgi_server_argv, free_port, http_ok, running, service_env

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.django_db(transaction=True)]

SHOTS = REPO / "reports" / "screenshots"
TOKEN = "tok-browser-0001"


@pytest.fixture(scope="module")
def web(django_db_setup: Any, django_db_blocker: Any) -> Iterator[str]:
    """The ASGI server with loopback allowlisted, so the connection test may reach the local API."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with django_db_blocker.unblock():
        env = service_env(
            DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost", AIOS_PUBLIC_URLS=base, AIOS_HTTP_ALLOWLIST="127.0.0.1/32"
        )
    with running("connections-asgi", asgi_server_argv(port), ready=lambda log: http_ok(f"{base}/healthz"), env=env):
        yield base


@pytest.fixture
def chromium() -> Iterator[Browser]:
    from tests.e2e.conftest import CHROMIUM_FLAGS, chromium_path

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS, headless=True)
        yield browser
        browser.close()


def _sign_in(page: Any, base: str, username: str) -> None:
    page.goto(f"{base}/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()


def test_admin_creates_tests_and_saves_a_connection(web, chromium, admin_user_role, analyst, team, outsider):
    SHOTS.mkdir(parents=True, exist_ok=True)
    make_connection(finance_team(outsider), name="ledger", kind="sql", label="Ledger database")
    make_connection(team, name="outbox", kind="smtp", label="Claims mail")
    errors: list[str] = []
    with ApiServer(static_tokens={TOKEN}) as api:
        context = chromium.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        _sign_in(page, web, "adam")
        page.goto(f"{web}/connections/new/")
        page.get_by_role("link", name="HTTP API").click()
        page.locator("#id_name").fill("erp")
        page.locator("#id_label").fill("ERP (production)")
        page.locator("#id_team").select_option(label="Claims")
        page.locator("#id_config_base_url").fill(f"{api.url}/api/")
        page.locator("#id_config_test_path").fill("health")
        page.locator("#id_config_auth").select_option("bearer")
        expect(page.locator("#id_config_client_id")).to_be_hidden()
        expect(page.locator("#id_secret_token")).to_be_visible()
        page.locator("#id_secret_token").fill("tok-wrong-0002")
        page.get_by_role("button", name="Test connection").click()
        expect(page.locator("#test-result")).to_contain_text("The test failed", timeout=15000)
        expect(page.locator("#test-result")).to_contain_text("answered HTTP 401")
        page.screenshot(path=str(SHOTS / "connections-new-failed-1280.png"), full_page=True)
        page.locator("#id_secret_token").fill(TOKEN)
        page.get_by_role("button", name="Test connection").click()
        expect(page.locator("#test-result")).to_contain_text("The test passed", timeout=15000)
        page.screenshot(path=str(SHOTS / "connections-new-1280.png"), full_page=True)
        page.get_by_role("button", name="Test and save").click()
        expect(page.get_by_role("heading", name="ERP (production)")).to_be_visible()
        expect(page.get_by_text('Saved "ERP (production)" (the test passed).')).to_be_visible()
        assert TOKEN not in page.content()
        page.screenshot(path=str(SHOTS / "connections-detail-admin-1280.png"), full_page=True)
        page.goto(f"{web}/connections/")
        expect(page.locator("#connection-erp")).to_contain_text("Passed")
        page.screenshot(path=str(SHOTS / "connections-list-admin-1280.png"), full_page=True)
        page.set_viewport_size({"width": 390, "height": 844})
        page.screenshot(path=str(SHOTS / "connections-list-admin-390.png"), full_page=True)
        page.goto(f"{web}/connections/erp/")
        page.screenshot(path=str(SHOTS / "connections-detail-admin-390.png"), full_page=True)
        page.goto(f"{web}/connections/new/?kind=sql")
        page.screenshot(path=str(SHOTS / "connections-new-sql-390.png"), full_page=True)
        page.goto(f"{web}/connections/erp/delete/")
        page.screenshot(path=str(SHOTS / "connections-delete-390.png"), full_page=True)
        context.close()

        context = chromium.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        _sign_in(page, web, "ana")
        page.goto(f"{web}/connections/")
        expect(page.locator("#connection-erp")).to_be_visible()
        expect(page.locator("#connection-ledger")).to_have_count(0)
        page.screenshot(path=str(SHOTS / "connections-list-analyst-1280.png"), full_page=True)
        page.goto(f"{web}/connections/erp/")
        expect(page.get_by_role("heading", name="Settings")).to_be_visible()
        expect(page.get_by_role("button", name="Test connection")).to_have_count(0)
        page.screenshot(path=str(SHOTS / "connections-detail-analyst-1280.png"), full_page=True)
        page.goto(f"{web}/connections/teams/{team.slug}/")
        page.set_viewport_size({"width": 390, "height": 844})
        page.screenshot(path=str(SHOTS / "connections-team-analyst-390.png"), full_page=True)
        context.close()
        # A signed-in person with no connections sees the explanation, not an empty table.
        context = chromium.new_context(viewport={"width": 390, "height": 844})
        page = context.new_page()
        _sign_in(page, web, "rita")
        page.goto(f"{web}/connections/?kind=mailbox")
        expect(page.get_by_text("No connection matches these filters.")).to_be_visible()
        context.close()
    assert Connection.objects.get(name="erp").secrets == {"token": TOKEN}
    assert errors == []
