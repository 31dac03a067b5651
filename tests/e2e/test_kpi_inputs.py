"""In Chromium: a manager reads the KPI inputs, is told what is wrong with a bad rate, changes a process's
baseline, and the page holds up at desktop and phone width under the strict CSP (screenshots in
reports/screenshots)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from playwright.sync_api import Browser, expect

from apps.dashboards.models import KpiSettings
from apps.workflows.models import Workflow
from tests.conftest import PASSWORD
from tests.dashboards.dataset import dataset_build
from tests.e2e.conftest import SCREENSHOT_DIR

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def _problems_of(page) -> list[str]:
    """Console errors (a CSP refusal is one) and page errors, as they happen."""
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    return problems


def test_a_manager_changes_the_kpi_inputs_in_the_browser(asgi_server, analyst, reviewer, manager, browser: Browser):
    data = dataset_build(owner=analyst, reviewer=reviewer, rollups=False)
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    for width, name in ((1280, "desktop"), (390, "phone")):
        context = browser.new_context(viewport={"width": width, "height": 900})
        page = context.new_page()
        problems = _problems_of(page)
        page.goto(f"{asgi_server}/accounts/login/")
        page.get_by_label("Username").fill("max")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.goto(f"{asgi_server}/dashboards/inputs/")
        expect(page.get_by_role("heading", name="KPI inputs")).to_be_visible()
        expect(page.get_by_role("row", name="Claims triage")).to_contain_text("45")
        page.screenshot(path=str(SCREENSHOT_DIR / f"kpi-inputs-{name}.png"), full_page=True)
        assert not problems, problems
        context.close()

    page = browser.new_page()
    with page.context:
        page.goto(f"{asgi_server}/accounts/login/")
        page.get_by_label("Username").fill("max")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.goto(f"{asgi_server}/dashboards/inputs/")
        page.get_by_label("Reviewer loaded hourly rate").fill("-3")
        page.get_by_role("button", name="Save the rate").click()
        expect(page.get_by_role("alert").first).to_contain_text("greater than or equal to 0")
        assert KpiSettings.objects.get().reviewer_hourly_rate == Decimal("60")
        page.get_by_label("Reviewer loaded hourly rate").fill("72.50")
        page.get_by_role("button", name="Save the rate").click()
        expect(page.get_by_text("Saved the reviewer rate.")).to_be_visible()
        page.get_by_role("link", name="Claims triage").click()
        page.get_by_label("Baseline minutes per case").fill("30")
        page.get_by_label("Realisation factor (%)").fill("90")
        page.screenshot(path=str(SCREENSHOT_DIR / "kpi-inputs-process-desktop.png"), full_page=True)
        page.get_by_role("button", name="Save").click()
        expect(page.get_by_text('Saved the KPI inputs of "Claims triage".')).to_be_visible()
        assert Workflow.objects.get(pk=data.claims.pk).baseline_minutes_per_case == Decimal("30")
        assert KpiSettings.objects.get().reviewer_hourly_rate == Decimal("72.50")
