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
from tests.support import devserver

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
        "?period=custom&start=9999-01-01&end=9999-12-31",
        "?period=custom&start=2099-01-01&end=2099-06-01",
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
    assert 'aria-invalid="true"' in page and 'aria-describedby="id_' in page  # the error is the field's description
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


@pytest.fixture
def model_server() -> Any:
    """Extra development inference servers reporting a model of our choosing (tests/support/devserver.py)."""
    return devserver.make_server.__wrapped__()  # type: ignore[attr-defined]


def test_the_model_card(analyst: Any, manager: Any, data: Any, model_server: Any) -> None:
    from apps.accounts.services import user_create
    from apps.inference.models import ModelEndpoint
    from apps.inference.services import endpoint_probe
    from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish

    endpoint = data.cloud
    for model_id in ("acme/claims-7b", "acme/claims-8b"):
        with model_server(model_id=model_id, max_total_tokens=8192) as url:
            ModelEndpoint.objects.filter(pk=endpoint.pk).update(url=url)
            endpoint.refresh_from_db()
            endpoint_probe(actor=None, endpoint=endpoint)
    workflow = workflow_create(actor=analyst, name="Reply drafting", team=None)
    graph = {
        "steps": [
            {
                "key": "draft",
                "type": "llm.generate",
                "config": {"prompt": "Reply to {{ input.x }}", "model": endpoint.name},
            }
        ]
    }
    schema = {"type": "object", "properties": {"x": {"type": "string"}}}
    version = workflow_version_create(actor=analyst, workflow=workflow, graph=graph, input_schema=schema)
    workflow_version_publish(actor=analyst, version=version)

    page = _page(_client(manager), reverse("dashboards:endpoint", args=[endpoint.name]))
    _no_inline_code(page)
    history = page[page.index("Revision history") : page.index("Evaluation results")]
    assert history.index("acme/claims-8b") < history.index("acme/claims-7b")  # newest first
    assert "current" in history and "8192" in history
    uses = page[page.index("Workflows that use it") : page.index("Revision history")]
    assert "Reply drafting" in uses and "draft" in uses
    # Someone who may not read the workflow sees the endpoint's card without it.
    other = user_create(username="olga", password="x" * 20, roles=["analyst"], first_name="Olga")
    page = _page(_client(other), reverse("dashboards:endpoint", args=[endpoint.name]))
    assert "Reply drafting" not in page and "acme/claims-8b" in page


def test_which_steps_call_an_endpoint() -> None:
    from apps.dashboards.page_data import graph_uses_endpoint
    from apps.inference.models import ModelEndpoint

    big = ModelEndpoint(name="big", is_default=False)
    default = ModelEndpoint(name="small", is_default=True)
    graph = {
        "steps": [
            {"key": "a", "type": "llm.generate", "config": {"prompt": "x", "model": ""}},
            {"key": "b", "type": "llm.extract", "config": {"model": "other", "fallbacks": ["big"]}},
            {
                "key": "each",
                "type": "flow.foreach",
                "config": {},
                "lanes": {
                    "body": [
                        {"key": "c", "type": "llm.classify", "config": {"routing": {"small": "small", "large": "big"}}}
                    ]
                },
            },
            {"key": "d", "type": "http.request", "config": {"url": "https://big.example"}},
        ]
    }
    assert graph_uses_endpoint(graph, big) == ["b", "c"]
    assert graph_uses_endpoint(graph, default) == ["a", "c"]


def test_dates_typed_mean_a_custom_period_and_no_period_means_30_days(manager: Any, data: Any) -> None:
    client = _client(manager)
    page = _page(client, reverse("dashboards:overview") + "?period=7&start=2026-11-01&end=2026-11-10")
    assert "01 Nov 2026 to 10 Nov 2026 (10 days)" in page
    assert '<option value="custom" selected>' in page
    page = _page(client, reverse("dashboards:overview") + "?team=")
    assert "(30 days)" in page and '<option value="30" selected>' in page


def test_a_process_of_another_team_is_a_form_error(manager: Any, analyst: Any, claims_workflow: Any) -> None:
    from apps.accounts.services import team_create
    from apps.workflows.models import Workflow

    billing = team_create(name="Billing", members=[], actor=None)
    Workflow.objects.create(name="Invoice review", slug="invoice-review", owner=analyst, team=billing)
    client = _client(manager)
    url = reverse("dashboards:overview") + f"?team={claims_workflow.team.slug}&process=invoice-review"
    page = _page(client, url, status=400)
    assert "Invoice review belongs to another team than" in page
    # A process page has neither a team nor a process to choose.
    page = _page(client, reverse("dashboards:process", args=[claims_workflow.slug]) + "?team=billing")
    assert 'name="team"' not in page and 'name="process"' not in page


def test_a_refresh_after_the_session_ended_swaps_nothing(manager: Any, data: Any) -> None:
    anonymous = Client()
    url = reverse("dashboards:widget", args=["kpis"]) + "?period=30"
    assert anonymous.get(url, HTTP_HX_REQUEST="true").status_code == 204
    assert anonymous.get(url).status_code == 302
    fragment = _client(manager).get(url, HTTP_HX_REQUEST="true")
    assert fragment.status_code == 200 and "Key figures" in fragment.content.decode()


def test_a_csv_file_name_keeps_only_safe_characters(manager: Any, data: Any) -> None:
    url = reverse("dashboards:queue-widget-csv", args=[data.queue.key, "reviewers"]) + "?period=custom"
    url += "&start=2026-11-01&end=2026-11-30"
    response = _client(manager).get(url)
    assert response["Content-Disposition"] == 'attachment; filename="claims-adjusters-reviewers-20261101-20261130.csv"'


def test_one_version_of_one_process(manager: Any, data: Any) -> None:
    page = _page(_client(manager), reverse("dashboards:overview") + "?period=30&process=claims-triage&version=1")
    expected = EXPECTED["versions"][1]
    assert re.search(rf'id="kpi-cases".*?<p class="kpi-value">{expected["cases"]}</p>', page, re.S)
    assert re.search(rf'id="kpi-throughput".*?<p class="kpi-value">{expected["throughput"]}</p>', page, re.S)


def test_queue_and_endpoint_pages_with_an_empty_period(manager: Any, data: Any) -> None:
    client = _client(manager)
    query = "?period=custom&start=2024-01-01&end=2024-01-31"
    page = _page(client, reverse("dashboards:queue", args=[data.queue.key]) + query)
    assert "No data for this period" in page and "No approval item of this queue arrived" in page
    assert 'role="img"' not in page
    page = _page(client, reverse("dashboards:endpoint", args=[data.cloud.name]) + query)
    assert "No data for this period" in page and "No call reached this endpoint" in page
    assert "What it serves" in page  # the model card does not depend on the period


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("?period=custom&start=9999-99-99&end=2026-01-01", 400),  # not a date
        ("?period=custom&start=0001-01-01&end=9999-12-31", 400),  # before the earliest day, after today, too long
        ("?version=abc&process=claims-triage", 400),  # not a version
        ("?team=%3Cscript%3E&process=%00", 400),  # no such team
        ("?period=" + "9" * 500, 400),  # no such period
        ("?start=2026-11-01", 200),  # a start without a custom period is ignored: the default 30 days
        ("?period=7&period=90", 200),  # the last value wins, as Django reads a repeated parameter
    ],
)
def test_odd_filters_never_fail(manager: Any, data: Any, query: str, status: int) -> None:
    client = _client(manager)
    urls = [
        reverse("dashboards:overview"),
        reverse("dashboards:process", args=[data.claims.slug]),
        reverse("dashboards:queue", args=[data.queue.key]),
        reverse("dashboards:endpoint", args=[data.cloud.name]),
        reverse("dashboards:widget", args=["kpis"]),
        reverse("dashboards:widget-csv", args=["processes"]),
    ]
    for url in urls:
        response = client.get(url + query)
        expected = status
        if "version=abc" in query and ("/queues/" in url or "/endpoints/" in url):
            expected = 200  # queue and endpoint figures are per process, not per version: they have no such field
        assert response.status_code == expected, (url + query, response.status_code)
        assert "<script>" not in response.content.decode()


def test_queue_and_endpoint_pages_offer_no_version_filter(manager: Any, data: Any) -> None:
    """Their figures are kept per process, not per version: a version field would filter nothing."""
    client = _client(manager)
    for url in (
        reverse("dashboards:queue", args=[data.queue.key]),
        reverse("dashboards:endpoint", args=[data.cloud.name]),
    ):
        page = _page(client, url + "?process=claims-triage")
        assert 'name="version"' not in page and 'name="process"' in page
    assert 'name="version"' in _page(client, reverse("dashboards:overview") + "?process=claims-triage")
