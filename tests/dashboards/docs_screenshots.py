"""The dashboards' screenshots in docs/, made from the demo `make run` seeds (60 days of marked demo history).

Not part of the suite (the file name does not start with test_): run it when the pages change, on the test stack,
and look at the images before committing them:

    .venv/bin/python -m deploy.devstack test -- .venv/bin/python -m pytest tests/dashboards/docs_screenshots.py

It writes docs/dashboard-overview.png and docs/dashboard-process.png (1280 px wide), and the queue, endpoint and
phone-width views of the same data to reports/screenshots/dashboards-demo-*.png.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from django.core.management import call_command
from playwright.sync_api import expect, sync_playwright

from tests.conftest import PASSWORD
from tests.e2e.conftest import CHROMIUM_FLAGS, SCREENSHOT_DIR, chromium_path
from tests.support.processes import REPO

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

DOCS = REPO / "docs"


def test_docs_screenshots(asgi_server: str) -> None:
    from apps.accounts.models import User
    from apps.accounts.services import user_set_password
    from apps.approvals.models import ApprovalQueue
    from apps.inference.models import ModelEndpoint

    call_command("seed_demo")
    user_set_password(user=User.objects.get(username="max"), password=PASSWORD)
    queue = ApprovalQueue.objects.order_by("pk").first()
    endpoint = ModelEndpoint.objects.filter(is_default=True).first() or ModelEndpoint.objects.first()
    from apps.workflows.models import Workflow

    process = Workflow.objects.filter(name="Support ticket triage").first() or Workflow.objects.order_by("pk").first()
    assert process is not None
    process_slug = process.slug
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS, headless=True)
        for width in (1280, 390):
            page = browser.new_context(viewport={"width": width, "height": 900}).new_page()
            page.goto(f"{asgi_server}/accounts/login/")
            page.get_by_label("Username").fill("max")
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(f"{asgi_server}/")
            shots: dict[str, Any] = {
                "overview": "/dashboards/?period=30",
                # A process with reviewers in it, so its page shows every part of a case's cost and time.
                "process": f"/dashboards/processes/{process_slug}/?period=30",
            }
            if queue is not None:
                shots["queue"] = f"/dashboards/queues/{queue.key}/?period=30"
            if endpoint is not None:
                shots["endpoint"] = f"/dashboards/endpoints/{endpoint.name}/?period=30"
            for name, path in shots.items():
                page.goto(asgi_server + path)
                expect(page.locator("h1")).to_be_visible()
                page.screenshot(path=str(SCREENSHOT_DIR / f"dashboards-demo-{name}-{width}.png"), full_page=True)
                if width == 1280 and name in ("overview", "process"):
                    page.screenshot(path=str(DOCS / f"dashboard-{name}.png"), full_page=True)
        browser.close()
