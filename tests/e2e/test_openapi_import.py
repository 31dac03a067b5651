"""In Chromium, against the real ASGI server: an admin gives the "ERP API" connection its OpenAPI document (a
file that refers to another file is refused with the reason; then "Load operations" fetches it from under the
base URL) and reads its operations; an analyst adds an HTTP request step, picks the connection, then an
operation from a labelled list, fills the form that follows (a parameter with the data picker) and saves.
Screenshots at 1280 and 390 pixels go to reports/screenshots/."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from apps.workflows.services import workflow_create, workflow_draft_save
from tests.conftest import PASSWORD
from tests.connectors.helpers import make_connection
from tests.connectors.openapi_erp import ERP_YAML
from tests.e2e.conftest import SCREENSHOT_DIR
from tests.support.processes import asgi_server_argv, free_port, http_ok, running, service_env

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def web(django_db_setup: Any, django_db_blocker: Any) -> Iterator[str]:
    """The ASGI server with loopback allowlisted, so the connection may reach the local API."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with django_db_blocker.unblock():
        env = service_env(
            DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost", AIOS_PUBLIC_URLS=base, AIOS_HTTP_ALLOWLIST="127.0.0.1/32"
        )
    with running("openapi-asgi", asgi_server_argv(port), ready=lambda log: http_ok(f"{base}/healthz"), env=env):
        yield base


@pytest.fixture
def erp_api() -> Iterator[str]:
    """The ERP's API, serving its OpenAPI document at /api/v1/openapi.yaml."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            found = self.path == "/api/v1/openapi.yaml"
            body = ERP_YAML.encode() if found else b"no such document"
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "application/yaml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _sign_in(page: Page, base: str, username: str) -> None:
    page.goto(f"{base}/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()


def _shots(page: Page, name: str) -> None:
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    for width, height in ((1280, 900), (390, 844)):
        page.set_viewport_size({"width": width, "height": height})
        page.screenshot(path=str(SCREENSHOT_DIR / f"{name}-{width}.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})


def _submit(page: Page, button: Any) -> None:
    # The builder answers its own saves with the page itself (htmx): wait for it before going on.
    with page.expect_response(lambda response: "/edit/steps/" in response.url):
        button.click()
    page.wait_for_load_state("networkidle")


def test_admin_loads_the_document_and_an_analyst_picks_an_operation(
    web: str, erp_api: str, browser: Browser, admin_user_role: Any, analyst: Any, team: Any, tmp_path: Path
) -> None:
    make_connection(team, label="ERP API", config={"base_url": f"{erp_api}/api/v1/"})
    errors: list[str] = []

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    _sign_in(page, web, "adam")
    page.goto(f"{web}/connections/erp/")
    page.get_by_role("link", name="Load an OpenAPI document").click()
    expect(page.get_by_role("heading", name="Operations of ERP API")).to_be_visible()
    expect(page.get_by_text("No OpenAPI document yet")).to_be_visible()
    # A file that refers to another file: refused with the reason under the field, nothing stored.
    bundled_not = tmp_path / "erp-split.yaml"
    bundled_not.write_text(ERP_YAML.replace("'#/components/schemas/Money'", "'money.yaml#/Money'"))
    page.get_by_label("OpenAPI file").set_input_files(str(bundled_not))
    page.get_by_role("button", name="Upload and load operations").click()
    expect(page.locator(".field-error")).to_contain_text('refers to "money.yaml#/Money"')
    expect(page.get_by_text("No OpenAPI document yet")).to_be_visible()
    _shots(page, "openapi-refused")
    # The refusal answers 400, which Chromium logs as a failed load: expected here, and nothing else may be.
    assert errors == ["Failed to load resource: the server responded with a status of 400 (Bad Request)"]
    errors.clear()
    # From the API itself.
    page.get_by_label("Path of the document").fill("/openapi.yaml")
    page.get_by_role("button", name="Load operations", exact=True).click()
    expect(page.get_by_text('Loaded the OpenAPI document "Acme ERP API": 10 operations.')).to_be_visible()
    table = page.get_by_role("table")
    expect(table).to_contain_text("/purchase-orders/{po_number}")
    expect(table).to_contain_text("Read a purchase order")
    _shots(page, "openapi-operations-admin")
    page.goto(f"{web}/connections/erp/")
    expect(page.get_by_role("link", name="View its operations")).to_be_visible()
    _shots(page, "openapi-connection-detail")
    context.close()

    workflow = workflow_create(actor=analyst, name="Purchase order check", team=team)
    schema = {"type": "object", "properties": {"po": {"type": "string", "title": "PO number"}}}
    workflow_draft_save(
        actor=analyst, workflow=workflow, graph={"steps": []}, input_schema=schema, expected_revision=None
    )
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    _sign_in(page, web, "ana")
    page.goto(f"{web}/workflows/{workflow.slug}/edit/")
    page.locator('a.insert-link[href*="insert=root:0"]').first.click()
    page.get_by_label("Search step types").fill("http")
    page.get_by_role("button", name="Search").click()
    with page.expect_response(lambda response: "/edit/operation/" in response.url):
        page.get_by_role("button", name=re.compile("^HTTP request")).click()

    page.get_by_label("Connection").select_option("erp")
    _submit(page, page.get_by_role("button", name="Show its operations"))
    operation = page.get_by_label("Operation", exact=True)
    expect(operation).to_be_visible()
    expect(operation.locator("option")).to_contain_text(["None: write the method and URL"])
    operation.select_option(label="GET /purchase-orders/{po_number} · Read a purchase order")
    _submit(page, page.get_by_role("button", name="Show its fields"))
    expect(page.get_by_label("URL")).to_have_count(0)
    po_number = page.get_by_label(re.compile("^po_number"))
    expect(po_number).to_be_visible()
    expect(page.get_by_text("In the path. Text. The purchase order's number")).to_be_visible()
    # The data picker beside the parameter puts in the run's input.
    field = page.locator("#field-config-parameters-po_number").locator("xpath=..")
    field.get_by_text("Insert data").click()
    field.get_by_role("button", name=re.compile("PO number")).click()
    expect(po_number).to_have_value("{{ input.po }}")
    _submit(page, page.get_by_role("button", name="Save step"))
    step = workflow.versions.get(state="draft").graph["steps"][0]
    assert step["config"]["operation"] == "getPurchaseOrder"
    assert step["config"]["parameters"] == {"po_number": "{{ input.po }}"}
    expect(page.locator(".step-card").first).to_contain_text("Call getPurchaseOrder on erp")
    expect(page.get_by_label(re.compile("^po_number"))).to_have_value("{{ input.po }}")
    _shots(page, "openapi-builder-panel")
    context.close()
    assert errors == []
