"""The MCP connection pages in Chromium, against the real ASGI server and an SDK server over Streamable HTTP: an
admin picks the MCP kind, the form shows only the chosen transport's fields, "Test connection" lists the server's
tools with their descriptions, saving lands on the connection's page; an analyst reads it without secrets.
Screenshots at 1280 and 390 pixels go to reports/screenshots/."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, expect, sync_playwright

from apps.connectors.models import Connection
from tests.conftest import PASSWORD
from tests.connectors.test_mcp_client import SERVER_SCRIPT, _free_port, _wait_for
from tests.support.processes import REPO, asgi_server_argv, free_port, http_ok, running, service_env

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.django_db(transaction=True)]

SHOTS = REPO / "reports" / "screenshots"
TOKEN = "tok-mcp-browser-0001"


@pytest.fixture(scope="module")
def web(django_db_setup: Any, django_db_blocker: Any) -> Iterator[str]:
    """The ASGI server with loopback allowlisted, so the connection test may reach the local MCP server."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with django_db_blocker.unblock():
        env = service_env(
            DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost", AIOS_PUBLIC_URLS=base, AIOS_HTTP_ALLOWLIST="127.0.0.1/32"
        )
    with running("mcp-connections-asgi", asgi_server_argv(port), ready=lambda log: http_ok(f"{base}/healthz"), env=env):
        yield base


@pytest.fixture(scope="module")
def tools_url() -> Iterator[str]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, str(SERVER_SCRIPT), "http", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_for(port, process)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        process.wait(timeout=10)


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


def test_admin_sets_up_an_mcp_server_and_sees_its_tools(web, chromium, admin_user_role, analyst, team, tools_url):
    SHOTS.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    _sign_in(page, web, "adam")
    page.goto(f"{web}/connections/new/")
    page.get_by_role("link", name="MCP server").click()
    page.locator("#id_name").fill("claims-tools")
    page.locator("#id_label").fill("Claims tools")
    page.locator("#id_team").select_option(label="Claims")
    page.get_by_label("Transport").select_option("stdio")
    expect(page.get_by_label("Program")).to_be_visible()
    expect(page.get_by_label("Server URL")).to_be_hidden()
    expect(page.get_by_label("Bearer token")).to_be_hidden()
    page.screenshot(path=str(SHOTS / "connections-new-mcp-stdio-1280.png"), full_page=True)
    page.get_by_label("Transport").select_option("http")
    expect(page.get_by_label("Program")).to_be_hidden()
    page.get_by_label("Server URL").fill(tools_url)
    page.get_by_label("Bearer token").fill(TOKEN)
    page.get_by_label("Extra headers").fill("X-API-Key: key-browser-0002")
    page.get_by_role("button", name="Test connection").click()
    result = page.locator("#test-result")
    expect(result).to_contain_text("The test passed", timeout=20000)
    expect(result).to_contain_text("Connected and listed 4 tools: echo, fail, total, wait.")
    expect(result.get_by_text("Always refuses, with the reason given.")).to_be_visible()
    page.screenshot(path=str(SHOTS / "connections-new-mcp-1280.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(SHOTS / "connections-new-mcp-390.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})
    page.get_by_role("button", name="Test and save").click()
    expect(page.get_by_role("heading", name="Claims tools")).to_be_visible()
    expect(page.get_by_text("Connected and listed 4 tools")).to_be_visible()
    assert TOKEN not in page.content() and "key-browser-0002" not in page.content()
    page.screenshot(path=str(SHOTS / "connections-detail-mcp-admin-1280.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(SHOTS / "connections-detail-mcp-admin-390.png"), full_page=True)
    context.close()

    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    _sign_in(page, web, "ana")
    page.goto(f"{web}/connections/claims-tools/")
    expect(page.get_by_role("heading", name="Settings")).to_be_visible()
    expect(page.get_by_text(tools_url)).to_be_visible()
    expect(page.get_by_text("Program")).to_have_count(0)  # the other transport's settings are left out
    page.screenshot(path=str(SHOTS / "connections-detail-mcp-analyst-1280.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(SHOTS / "connections-detail-mcp-analyst-390.png"), full_page=True)
    context.close()
    saved = Connection.objects.get(name="claims-tools")
    assert saved.secrets == {"token": TOKEN, "headers": '{"X-API-Key":"key-browser-0002"}'}
    assert errors == []
