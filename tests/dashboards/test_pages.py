"""The dashboard pages on the known dataset (tests/dashboards/dataset.py): what a manager reads, the filters in the
URL (a bad value is a form error, never a 500), the empty state, the fragments, the CSV downloads, who may see
which process, queue and endpoint, and what the pages must never contain (inline script or style)."""

from __future__ import annotations

import csv
import io
import re
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from apps.dashboards.charts import format_value
from apps.dashboards.widgets import ENDPOINT, OVERVIEW, PROCESS, QUEUE, widgets_for
from tests.dashboards.dataset import EXPECTED, dataset_build

pytestmark = pytest.mark.django_db


TILE_UNITS = {
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


@pytest.fixture
def data(analyst: Any, reviewer: Any) -> Any:
    return dataset_build(owner=analyst, reviewer=reviewer)


def _client(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _page(client: Client, url: str, status: int = 200) -> str:
    response = client.get(url)
    assert response.status_code == status, (url, response.status_code)
    return response.content.decode()


def _no_inline_code(page: str) -> None:
    """Strict CSP: no inline script, no style attribute, no inline event handler."""
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page), "inline <script>"
    assert " style=" not in page
    assert not re.search(r"\son[a-z]+=", page), "inline event handler"


def test_the_overview_of_one_process_shows_the_known_figures(manager: Any, data: Any) -> None:
    page = _page(_client(manager), reverse("dashboards:overview") + "?period=30&process=claims-triage")
    _no_inline_code(page)
    # Tiles with the hand-computed figures (dataset.EXPECTED), as the page formats them.
    units = {kpi: unit for kpi, unit in TILE_UNITS.items()}
    for key, unit in units.items():
        shown = format_value(EXPECTED[key], unit, currency="EUR")
        assert re.search(rf'id="kpi-{key}".*?<p class="kpi-value[^"]*">{re.escape(shown)}</p>', page, re.S), key
    assert page.count("How this is computed") >= len(EXPECTED) - 8
    # Every chart is a figure with a caption, an SVG with title and desc, and its data table.
    assert page.count('role="img"') >= 5
    assert page.count("<summary>Data table") >= 5
    assert "<desc" in page and "Cases per day from" in page


def test_every_widget_has_a_fragment_and_a_csv(manager: Any, data: Any) -> None:
    client = _client(manager)
    query = "?period=30"
    objects = {
        OVERVIEW: ("widget", []),
        PROCESS: ("process-widget", [data.claims.slug]),
        QUEUE: ("queue-widget", [data.queue.key]),
        ENDPOINT: ("endpoint-widget", [data.cloud.name]),
    }
    for scope, (name, args) in objects.items():
        for widget in widgets_for(scope):
            fragment = _page(client, reverse(f"dashboards:{name}", args=[*args, widget.slug]) + query)
            assert "<html" not in fragment and widget.title in fragment
            _no_inline_code(fragment)
            response = client.get(reverse(f"dashboards:{name}-csv", args=[*args, widget.slug]) + query)
            assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
            assert "attachment" in response["Content-Disposition"]
            rows = list(csv.reader(io.StringIO(response.content.decode())))
            assert rows and all(len(row) == len(rows[0]) for row in rows), (scope, widget.slug)


def test_the_process_page_compares_its_versions(manager: Any, data: Any) -> None:
    page = _page(_client(manager), reverse("dashboards:process", args=[data.claims.slug]) + "?period=30")
    _no_inline_code(page)
    assert "Versions compared" in page
    response = _client(manager).get(
        reverse("dashboards:process-widget-csv", args=[data.claims.slug, "versions"]) + "?period=30"
    )
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    by_version = {row[0]: row for row in rows[1:]}
    assert by_version["Claims triage v2"][1] == str(EXPECTED["versions"][2]["cases"])
    assert by_version["Claims triage v1"][1] == str(EXPECTED["versions"][1]["cases"])


def test_queue_and_endpoint_pages(manager: Any, data: Any) -> None:
    client = _client(manager)
    page = _page(client, reverse("dashboards:queue", args=[data.queue.key]) + "?period=30")
    _no_inline_code(page)
    assert "Load per reviewer" in page and "Time per item" in page
    page = _page(client, reverse("dashboards:endpoint", args=[data.cloud.name]) + "?period=30")
    _no_inline_code(page)
    for heading in ("What it serves", "Workflows that use it", "Revision history", "Evaluation results", "Usage"):
        assert heading in page
    assert "overloaded" in page


@pytest.mark.parametrize(
    "query",
    [
        "?period=century",
        "?period=custom",
        "?period=custom&start=2026-12-01&end=2026-11-01",
        "?period=custom&start=not-a-date&end=2026-11-01",
        "?period=custom&start=1990-01-01&end=1990-02-01",
        "?team=no-such-team",
        "?process=no-such-process",
        "?process=claims-triage&version=99",
        "?version=1",
    ],
)
def test_a_filter_value_that_does_not_exist_is_a_form_error(manager: Any, data: Any, query: str) -> None:
    client = _client(manager)
    page = _page(client, reverse("dashboards:overview") + query, status=400)
    assert 'class="field-error"' in page and "The figures are not shown" in page
    fragment = client.get(reverse("dashboards:widget", args=["kpis"]) + query)
    assert fragment.status_code == 400 and "not valid" in fragment.content.decode()


def test_an_empty_period_says_so(manager: Any, data: Any) -> None:
    query = "?period=custom&start=2024-01-01&end=2024-01-31"
    page = _page(_client(manager), reverse("dashboards:overview") + query)
    assert "No data for this period" in page
    assert "kpi-cases" not in page  # no tiles of zeros, no empty charts
    assert "Backlog by age, now" in page  # what is open now does not depend on the period


def test_an_unknown_widget_or_object_is_404(manager: Any, data: Any) -> None:
    client = _client(manager)
    for url in (
        reverse("dashboards:widget", args=["no-such-widget"]),
        reverse("dashboards:widget", args=["reviewers"]),  # a queue widget asked of the overview
        reverse("dashboards:process", args=["no-such-process"]),
        reverse("dashboards:queue", args=["no:such:queue"]),
        reverse("dashboards:endpoint", args=["no-such-endpoint"]),
        reverse("dashboards:endpoint-widget-csv", args=["no-such-endpoint", "endpoint-calls"]),
    ):
        assert client.get(url).status_code == 404, url


def test_a_second_teams_process_is_hidden_from_the_analyst(analyst: Any, manager: Any, data: Any) -> None:
    from apps.accounts.services import user_create

    other = user_create(username="olga", password="x" * 20, roles=["analyst"], first_name="Olga")
    client = _client(other)
    assert client.get(reverse("dashboards:process", args=[data.claims.slug])).status_code == 404
    assert client.get(reverse("dashboards:process-widget-csv", args=[data.claims.slug, "kpis"])).status_code == 404
    page = _page(client, reverse("dashboards:overview") + "?process=claims-triage", status=400)
    assert "Claims triage" not in page
    page = _page(client, reverse("dashboards:overview"))
    assert "Claims triage" not in page
    # Ana owns it and reads it.
    assert _client(analyst).get(reverse("dashboards:process", args=[data.claims.slug])).status_code == 200


def test_csv_cells_that_look_like_formulas_are_defused(manager: Any, data: Any) -> None:
    data.invoices.name = '=HYPERLINK("http://x")'
    data.invoices.save(update_fields=["name"])
    response = _client(manager).get(reverse("dashboards:widget-csv", args=["processes"]) + "?period=30")
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    names = [row[0] for row in rows[1:]]
    assert '\'=HYPERLINK("http://x")' in names
    assert not any(name.startswith("=") for name in names)
