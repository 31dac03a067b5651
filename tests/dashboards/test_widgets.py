"""The widget registry (apps/dashboards/widgets.py): every widget's data and CSV rows on the known dataset, and
the number of queries each widget's fragment costs, pinned, and the same whatever the length of the period (the
figures come from the rollups, a fixed number of queries, never a scan per day)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.template.loader import get_template
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from apps.dashboards.selectors import DashboardFilter
from apps.dashboards.widgets import ENDPOINT, OVERVIEW, PROCESS, QUEUE, WIDGETS, PageData, widgets_for
from tests.dashboards.dataset import EXPECTED, dataset_build

pytestmark = pytest.mark.django_db

# Queries per widget fragment, the request's own included (session, user, roles, the filter form's choices). A
# change here is a change in what a widget costs: make it on purpose.
PINNED: dict[tuple[str, str], int] = {
    ("overview", "kpis"): 16,
    ("overview", "cases-over-time"): 15,
    ("overview", "automation-over-time"): 15,
    ("overview", "cycle-time"): 15,
    ("overview", "backlog"): 15,
    ("overview", "cost-per-case"): 9,
    ("overview", "hours-saved"): 16,
    ("overview", "processes"): 16,
    ("process", "kpis"): 19,
    ("process", "cases-over-time"): 18,
    ("process", "automation-over-time"): 18,
    ("process", "cycle-time"): 18,
    ("process", "backlog"): 18,
    ("process", "cost-per-case"): 12,
    ("process", "hours-saved"): 19,
    ("process", "versions"): 18,
    ("queue", "queue-kpis"): 14,
    ("queue", "queue-over-time"): 13,
    ("queue", "reviewers"): 13,
    ("queue", "time-per-item"): 14,
    ("endpoint", "endpoint-kpis"): 14,
    ("endpoint", "endpoint-calls"): 13,
    ("endpoint", "endpoint-tokens"): 13,
    ("endpoint", "endpoint-latency"): 13,
    ("endpoint", "endpoint-errors"): 13,
    ("endpoint", "endpoint-cost"): 14,
}


@pytest.fixture
def data(analyst: Any, reviewer: Any) -> Any:
    return dataset_build(owner=analyst, reviewer=reviewer)


def test_the_registry() -> None:
    assert len(WIDGETS) == len({widget.slug for widget in WIDGETS.values()})
    for widget in WIDGETS.values():
        assert widget.title and widget.scopes <= {OVERVIEW, PROCESS, QUEUE, ENDPOINT}, widget.slug
        get_template(widget.template)
    # Every page has its key figures first.
    for scope in (OVERVIEW, PROCESS, QUEUE, ENDPOINT):
        assert widgets_for(scope)[0].template == "dashboards/_widget_kpis.html"


def _page(manager: Any, data: Any, scope: str, flt: DashboardFilter) -> PageData:
    return PageData(manager, flt, queue=data.queue, endpoint=data.cloud)


def test_every_widget_gives_data_and_rectangular_rows(manager: Any, data: Any) -> None:
    flt = data.filter_x()
    for scope in (OVERVIEW, PROCESS, QUEUE, ENDPOINT):
        page = _page(manager, data, scope, flt)
        for widget in widgets_for(scope):
            context = widget.data(page)
            assert context, widget.slug
            rows = widget.rows(page)
            assert len(rows) >= 2, widget.slug  # a header and at least one row on this dataset
            assert all(len(row) == len(rows[0]) for row in rows), widget.slug
            assert all(isinstance(cell, str) for cell in rows[0]), widget.slug


def test_the_kpi_rows_carry_the_known_figures(manager: Any, data: Any) -> None:
    page = PageData(manager, data.filter_x())
    rows = {row[0]: row for row in WIDGETS["kpis"].rows(page)[1:]}
    assert rows["Cases"][1] == EXPECTED["cases"]
    assert rows["Completed cases"][1] == EXPECTED["throughput"]
    assert rows["Cost per case"][2] == "EUR"
    assert rows["Cost per case"][1] == EXPECTED["cost_per_case"]
    assert "How" not in rows["Cases"][4] and rows["Cases"][4]  # the "how" text itself


def test_the_cost_breakdown_adds_up_to_the_run_cost(manager: Any, data: Any) -> None:
    page = PageData(manager, data.filter_x())
    rows = WIDGETS["cost-per-case"].rows(page)
    parts = {row[0]: row for row in rows[1:]}
    total = parts["All parts"][1]
    # Each part is rounded to cents; the total is rounded once from the exact sum, as the "Run cost" tile is, so
    # the two never disagree by a cent (the parts may, by at most a cent each).
    assert abs(total - (parts["Model tokens"][1] + parts["GPU time"][1] + parts["Reviewers' time"][1])) <= Decimal(
        "0.03"
    )
    assert total == EXPECTED["run_cost"]
    tile = {kpi.key: kpi for kpi in page.overview.kpis}["run_cost"]
    assert total == Decimal(tile.value).quantize(Decimal("0.01"))


def test_queue_and_endpoint_widgets_carry_the_known_figures(manager: Any, data: Any) -> None:
    flt = DashboardFilter(start=data.filter_x().start, end=data.filter_x().end)
    page = PageData(manager, flt, queue=data.queue, endpoint=data.cloud)
    reviewers = WIDGETS["reviewers"].rows(page)[1:]
    assert sum(row[2] for row in reviewers) == EXPECTED["queue"]["decided"]
    assert sum(row[1] for row in reviewers) == EXPECTED["queue"]["opened"]
    edges_counts = WIDGETS["time-per-item"].rows(page)[1:]
    assert sum(row[2] for row in edges_counts) == EXPECTED["queue"]["decided"]
    errors = dict(row for row in WIDGETS["endpoint-errors"].rows(page)[1:])
    assert errors == EXPECTED["cloud"]["errors"]
    calls = WIDGETS["endpoint-calls"].rows(page)[1:]
    assert sum(row[1] for row in calls) == EXPECTED["cloud"]["calls"]


def _fragment_queries(client: Client, url: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    assert response.status_code == 200, url
    return len(queries)


def test_each_fragment_costs_a_pinned_number_of_queries_whatever_the_period(manager: Any, data: Any) -> None:
    client = Client()
    client.force_login(manager)
    objects = {
        OVERVIEW: ("widget", []),
        PROCESS: ("process-widget", [data.claims.slug]),
        QUEUE: ("queue-widget", [data.queue.key]),
        ENDPOINT: ("endpoint-widget", [data.cloud.name]),
    }
    measured = {}
    for scope, (name, args) in objects.items():
        for widget in widgets_for(scope):
            url = reverse(f"dashboards:{name}", args=[*args, widget.slug])
            client.get(url + "?period=30")  # warm the session and content-type caches
            month = _fragment_queries(client, url + "?period=30")
            quarter = _fragment_queries(client, url + "?period=90")
            assert month == quarter, f"{scope}/{widget.slug}: {month} queries for 30 days, {quarter} for 90"
            measured[(scope, widget.slug)] = quarter
    print("queries per widget fragment:", measured)
    changed = {key: (PINNED.get(key), count) for key, count in measured.items() if PINNED.get(key) != count}
    assert not changed, f"queries per fragment changed (pinned, now): {changed}; update PINNED if on purpose"


# Queries per whole page: its widgets share one load of the figures (PageData), so a page costs about one widget
# plus the extras of the page (the digest toggle, the model card).
PAGE_PINNED: dict[str, int] = {"overview": 20, "process": 30, "queue": 15, "endpoint": 18}


def test_each_page_costs_a_pinned_number_of_queries_whatever_the_period(manager: Any, data: Any) -> None:
    client = Client()
    client.force_login(manager)
    pages = {
        "overview": reverse("dashboards:overview"),
        "process": reverse("dashboards:process", args=[data.claims.slug]),
        "queue": reverse("dashboards:queue", args=[data.queue.key]),
        "endpoint": reverse("dashboards:endpoint", args=[data.cloud.name]),
    }
    measured = {}
    for name, url in pages.items():
        client.get(url + "?period=30")
        month = _fragment_queries(client, url + "?period=30")
        quarter = _fragment_queries(client, url + "?period=90")
        assert month == quarter, f"{name}: {month} queries for 30 days, {quarter} for 90"
        measured[name] = quarter
    print("queries per page:", measured)
    assert measured == PAGE_PINNED, "queries per page changed; update PAGE_PINNED if on purpose"
