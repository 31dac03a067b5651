"""The dashboards in Chromium, against the real ASGI server, on the known dataset (tests/dashboards/dataset.py).

A manager opens the overview, filters to one process and the last 30 days, sees every KPI the dataset's hand-computed
answers say, opens a chart's data table and downloads its CSV. Then every dashboard page at desktop (1280 px) and
phone (390 px) width and in the print layout, with no console error (a CSP violation would log one) and no page
wider than the screen. Screenshots go to reports/screenshots/dashboards-*.png."""

from __future__ import annotations

import csv
import io
import os
from typing import Any

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from apps.dashboards.charts import format_value
from apps.dashboards.histograms import bucket_of, representative
from tests.conftest import PASSWORD
from tests.dashboards.dataset import EXPECTED, dataset_build
from tests.e2e.conftest import CHROMIUM_FLAGS, SCREENSHOT_DIR, chromium_path

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

WIDTHS = {"desktop": 1280, "phone": 390}
TILES = {
    "cases": "count",
    "throughput": "count",
    "straight_through_rate": "percent",
    "escalation_rate": "percent",
    "override_rate": "percent",
    "audit_agreement": "percent",
    "sla_breach_rate": "percent",
    "sla_at_risk": "count",
    "failure_rate": "percent",
    "backlog": "count",
    "run_cost": "money",
    "cost_per_case": "money",
    "hours_saved": "hours",
    "time_saved_per_case": "seconds",
    "value": "money",
    "roi": "ratio",
    "payback": "months",
}


def sign_in(page: Page, base: str, username: str) -> None:
    page.goto(f"{base}/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{base}/")


def shoot(page: Page, name: str) -> None:
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT_DIR / f"dashboards-{name}.png"), full_page=True)


def fits(page: Page) -> None:
    """Nothing pushes the page sideways (wide charts and tables scroll inside their own box)."""
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 1, f"the page is {overflow} px wider than the window"


# What every dashboard page must hold, checked in the browser's own DOM: a label for every control, a title and a
# description for every chart, ids that are unique (the charts' aria-labelledby and patterns point at them).
ACCESSIBILITY_PROBLEMS = """() => {
  const problems = [];
  for (const control of document.querySelectorAll("main select, main input:not([type=hidden]), main textarea")) {
    if (!control.labels || control.labels.length === 0) problems.push("no label: " + (control.name || control.id));
  }
  for (const svg of document.querySelectorAll("svg[role=img]")) {
    const ids = (svg.getAttribute("aria-labelledby") || "").split(" ").filter(Boolean);
    if (ids.length < 2 || !ids.every((id) => document.getElementById(id))) problems.push("chart unlabelled");
    if (!svg.querySelector("title") || !svg.querySelector("desc")) problems.push("chart without title or desc");
  }
  const seen = new Set();
  for (const element of document.querySelectorAll("[id]")) {
    if (seen.has(element.id)) problems.push("duplicate id: " + element.id);
    seen.add(element.id);
  }
  return problems;
}"""


def test_a_manager_reads_one_process_and_downloads_a_chart(asgi_server: str, manager: Any, analyst: Any, reviewer: Any):
    data = dataset_build(owner=analyst, reviewer=reviewer)
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS, headless=True)
        context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        page = context.new_page()
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        sign_in(page, asgi_server, "max")
        page.get_by_role("link", name="Dashboards", exact=True).click()
        expect(page.get_by_role("heading", name="What AIOS delivers")).to_be_visible()
        page.get_by_label("Process", exact=True).select_option(label="Claims triage")
        page.get_by_label("Period", exact=True).select_option(label="Last 30 days")
        page.get_by_role("button", name="Show figures").click()
        page.wait_for_url(lambda url: "process=claims-triage" in url)
        expect(page.get_by_role("heading", name="Claims triage: what AIOS delivers")).to_be_visible()
        for key, unit in TILES.items():
            expect(page.locator(f"#kpi-{key} .kpi-value")).to_have_text(
                format_value(EXPECTED[key], unit, currency="EUR")
            )
        # Cycle time: each tile is the middle of the log-scale bucket the hand-computed percentile falls in (the
        # rollups keep buckets, so that is what a merged percentile can say; within ±9 %).
        for q in ("p50", "p95", "p99"):
            raw = EXPECTED["cycle_total_raw"][q]
            shown = format_value(representative(bucket_of(raw)), "seconds")
            expect(page.locator(f"#kpi-cycle_time_{q} .kpi-value")).to_have_text(shown)
        # Backlog by age: the data table holds the hand-counted open cases and items per bucket.
        backlog = page.locator("#widget-backlog")
        backlog.get_by_text("Data table").click()
        for label, (cases, items) in EXPECTED["backlog_buckets"].items():
            row = backlog.locator(".chart-table tbody tr", has_text=label)
            expect(row.locator("td").nth(0)).to_have_text(str(cases))
            expect(row.locator("td").nth(1)).to_have_text(str(items))
        # "How this is computed" opens to the formula and its inputs.
        tile = page.locator("#kpi-cost_per_case")
        tile.get_by_text("How this is computed").click()
        expect(tile.locator(".kpi-how")).to_contain_text("Run cost ÷ cases")
        expect(tile.get_by_role("link", name="Change the inputs")).to_be_visible()
        # A chart's data table, one row per day of the period.
        widget = page.locator("#widget-cases-over-time")
        expect(widget.locator("svg[role=img] desc")).to_contain_text("Started from")
        widget.get_by_text("Data table").click()
        expect(widget.locator(".chart-table tbody tr")).to_have_count(30)
        # Its CSV.
        with page.expect_download() as download:
            widget.get_by_role("link", name="Download CSV of cases over time").click()
        with open(download.value.path(), encoding="utf-8") as handle:
            rows = list(csv.reader(io.StringIO(handle.read())))
        assert rows[0] == ["Day", "Cases", "Completed", "Failed"]
        assert sum(int(row[1]) for row in rows[1:]) == EXPECTED["cases"]
        assert sum(int(row[2]) for row in rows[1:]) == EXPECTED["throughput"]
        # The widget refreshes itself as an htmx fragment with the page's filter (every minute; here at once).
        refresher = widget.locator("[hx-get]")
        assert "process=claims-triage" in (refresher.get_attribute("hx-get") or "")
        assert refresher.get_attribute("hx-trigger") == "every 300s"
        with page.expect_response(lambda response: "/widgets/cases-over-time/" in response.url) as fragment:
            page.evaluate(
                "element => htmx.ajax('GET', element.getAttribute('hx-get'), {target: element, swap: 'innerHTML'})",
                refresher.element_handle(),
            )
        assert fragment.value.status == 200
        expect(widget.locator("svg[role=img] desc")).to_contain_text("Started from")
        expect(widget.locator(".chart-table")).to_be_visible()  # the data table the reader opened stays open
        expect(widget.get_by_role("heading", name="Cases over time")).to_have_count(1)
        context.close()

        for label, width in WIDTHS.items():
            context = browser.new_context(viewport={"width": width, "height": 900})
            page = context.new_page()
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            sign_in(page, asgi_server, "max")
            pages = {
                "overview": "/dashboards/?period=30",
                "process": f"/dashboards/processes/{data.claims.slug}/?period=30",
                "queue": f"/dashboards/queues/{data.queue.key}/?period=30",
                "endpoint": f"/dashboards/endpoints/{data.cloud.name}/?period=30",
                "queues": "/dashboards/queues/",
                "endpoints": "/dashboards/endpoints/",
                "empty": "/dashboards/?period=custom&start=2024-01-01&end=2024-01-31",
                "invalid": "/dashboards/?process=nope",
            }
            for name, path in pages.items():
                page.goto(asgi_server + path)
                expect(page.locator("h1")).to_be_visible()
                shoot(page, f"{name}-{label}")
                fits(page)
                assert page.evaluate(ACCESSIBILITY_PROBLEMS) == [], f"{name} at {label} width"
                if name == "invalid":  # a bad filter is answered 400 on purpose; Chromium logs that as an error
                    errors[:] = [error for error in errors if "status of 400" not in error]
            # The print layout: no navigation, no filter, no buttons; charts and their data tables in full.
            page.goto(asgi_server + f"/dashboards/processes/{data.claims.slug}/?period=30")
            expect(page.get_by_role("button", name="Print")).to_be_visible()  # our script shows it
            page.emulate_media(media="print")
            expect(page.locator(".topbar")).to_be_hidden()
            expect(page.locator(".dash-filter")).to_be_hidden()
            expect(page.locator("#widget-cases-over-time .chart-table")).to_be_visible()
            shoot(page, f"print-{label}")
            context.close()
        browser.close()
    assert not errors, errors
