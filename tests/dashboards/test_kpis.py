"""Every KPI of process X against the hand-computed figures of tests/dashboards/dataset.py, read from the rollups."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.http import Http404
from django.test.utils import CaptureQueriesContext

from apps.dashboards import histograms
from apps.dashboards.models import EndpointDayRollup, QueueDayRollup, WorkflowDayRollup
from apps.dashboards.rollups import rollups_rebuild
from apps.dashboards.selectors import (
    DashboardFilter,
    dashboard_endpoints_for_user,
    dashboard_queues_for_user,
    dashboard_workflows_for_user,
    endpoint_view_for_user,
    overview_for_user,
    queue_view_for_user,
    versions_for_user,
)
from apps.runs.models import Run, StepRun
from tests.dashboards.dataset import EXPECTED, Dataset, dataset_build

pytestmark = pytest.mark.django_db


@pytest.fixture
def data(analyst: Any, reviewer: Any) -> Dataset:
    return dataset_build(owner=analyst, reviewer=reviewer)


def _kpis(kpis: list[Any] | dict[str, Any]) -> dict[str, Any]:
    items = kpis.values() if isinstance(kpis, dict) else kpis
    return {kpi.key: kpi.value for kpi in items}


def _same_bucket(estimate: float | None, raw: float) -> bool:
    return estimate is not None and histograms.bucket_of(estimate) == histograms.bucket_of(raw)


KPI_KEYS = [
    "cases",
    "throughput",
    "straight_through_rate",
    "escalation_rate",
    "override_rate",
    "audit_agreement",
    "sla_breach_rate",
    "sla_at_risk",
    "run_cost",
    "cost_per_case",
    "hours_saved",
    "time_saved_per_case",
    "value",
    "roi",
    "payback",
    "backlog",
]


def test_every_kpi_of_process_x_is_the_hand_computed_figure(data: Dataset, manager: Any) -> None:
    """One dataset, every tile: the mismatches are listed together (building the dataset once keeps this quick)."""
    figures = _kpis(overview_for_user(manager, data.filter_x(), now=data.now).kpis)
    wrong = {key: (figures.get(key), EXPECTED[key]) for key in KPI_KEYS if figures.get(key) != EXPECTED[key]}
    assert not wrong, f"(got, expected) per KPI: {wrong}"


def test_failure_rate_counts_a_failed_case_with_an_incident_once(data: Dataset, manager: Any) -> None:
    overview = overview_for_user(manager, data.filter_x(), now=data.now)
    failure = next(kpi for kpi in overview.kpis if kpi.key == "failure_rate")
    assert failure.value == pytest.approx(EXPECTED["failure_rate"], abs=1e-4)
    assert failure.inputs["Failed"] == "1" and failure.inputs["With an incident"] == "1"
    assert all(kpi.how for kpi in overview.kpis), "every tile says how it is computed"


def test_cycle_time_split_is_within_one_bucket_of_the_raw_percentiles(data: Dataset, manager: Any) -> None:
    cycle = overview_for_user(manager, data.filter_x(), now=data.now).cycle_time
    assert cycle.total.count == 4
    for name in ("p50", "p95", "p99"):
        assert _same_bucket(getattr(cycle.total, name), EXPECTED["cycle_total_raw"][name])
    for part, raw in (
        (cycle.machine, EXPECTED["cycle_machine_raw"]),
        (cycle.queue, EXPECTED["cycle_queue_raw"]),
        (cycle.human, EXPECTED["cycle_human_raw"]),
    ):
        for q, name in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
            assert _same_bucket(getattr(part, name), histograms.raw_percentile(raw, q)), (part, name)


def test_backlog_counts_open_cases_and_items_by_age(data: Dataset, manager: Any) -> None:
    backlog = overview_for_user(manager, data.filter_x(), now=data.now).backlog
    assert {b.label: (b.open_cases, b.open_approvals) for b in backlog} == EXPECTED["backlog_buckets"]


def test_a_case_whose_restart_is_still_running_is_open_once_and_ages_from_its_first_run(
    data: Dataset, manager: Any
) -> None:
    """A case failed two days ago and was restarted twice, the last restart still running (and a what-if of it,
    which is no case): the backlog counts it once, as open since two days ago."""
    first = Run.objects.create(workflow=data.claims, version=data.claims_v2, status="failed", trigger="manual")
    again = Run.objects.create(
        workflow=data.claims, version=data.claims_v2, status="failed", trigger="manual", restarted_from=first
    )
    running = Run.objects.create(
        workflow=data.claims, version=data.claims_v2, status="running", trigger="manual", restarted_from=again
    )
    Run.objects.create(
        workflow=data.claims, version=data.claims_v2, status="running", mode=Run.Mode.WHAT_IF, restarted_from=running
    )
    Run.objects.filter(pk=first.pk).update(created_at=data.now - timedelta(days=2))
    Run.objects.filter(pk=again.pk).update(created_at=data.now - timedelta(days=1))
    Run.objects.filter(pk=running.pk).update(created_at=data.now - timedelta(minutes=10))
    overview = overview_for_user(manager, data.filter_x(), now=data.now)
    buckets = {b.label: b.open_cases for b in overview.backlog}
    expected = {label: cases for label, (cases, _items) in EXPECTED["backlog_buckets"].items()}
    assert buckets == expected | {"1–3 days": expected["1–3 days"] + 1}
    assert _kpis(overview.kpis)["backlog"] == EXPECTED["backlog"] + 1


def test_versions_are_compared_side_by_side(data: Dataset, manager: Any) -> None:
    rows = versions_for_user(manager, data.filter_x())
    by_number = {row.version_number: _kpis(row.kpis) for row in rows}
    assert set(by_number) == {1, 2}, "the draft has no case and is not a published version"
    for number, expected in EXPECTED["versions"].items():
        for key, value in expected.items():
            assert by_number[number][key] == value, (number, key)


def test_the_series_has_one_point_per_day_and_adds_up(data: Dataset, manager: Any) -> None:
    series = overview_for_user(manager, data.filter_x(), now=data.now).series
    assert len(series) == 30
    assert sum(point.cases for point in series) == EXPECTED["cases"]
    assert sum(point.completed for point in series) == EXPECTED["throughput"]
    assert sum((point.cost for point in series), Decimal(0)) == EXPECTED["run_cost"]


def test_the_overview_lists_each_visible_process(data: Dataset, manager: Any) -> None:
    flt = DashboardFilter(start=data.today - timedelta(days=29), end=data.today)
    overview = overview_for_user(manager, flt, now=data.now)
    rows = {row.slug: _kpis(row.kpis) for row in overview.processes}
    assert rows["claims-triage"]["cases"] == EXPECTED["cases"]
    assert rows["invoice-review"]["cases"] == 1
    assert _kpis(overview.kpis)["cases"] == EXPECTED["cases"] + 1


def test_queue_view_matches_the_hand_computed_figures(data: Dataset, manager: Any, reviewer: Any) -> None:
    view = queue_view_for_user(manager, data.filter_x(), queue_id=data.queue.pk)
    figures = _kpis(view.kpis)
    for key, value in EXPECTED["queue"].items():
        assert figures[key] == value, key
    decided_by_rita = next(row for row in view.reviewers if row["reviewer_id"] == reviewer.pk)
    assert decided_by_rita["decided"] == 2 and decided_by_rita["sla_breached"] == 1
    assert _same_bucket(view.time_per_item.p50, 300.0)


def test_endpoint_views_count_every_call_and_gpu_seconds(data: Dataset, manager: Any) -> None:
    flt = DashboardFilter(start=data.today - timedelta(days=29), end=data.today)
    cloud = endpoint_view_for_user(manager, flt, endpoint_id=data.cloud.pk)
    figures = _kpis(cloud.kpis)
    assert figures["calls"] == EXPECTED["cloud"]["calls"]
    assert figures["cost"] == EXPECTED["cloud"]["cost"]
    assert cloud.errors == EXPECTED["cloud"]["errors"]
    gpu = _kpis(endpoint_view_for_user(manager, flt, endpoint_id=data.gpu.pk).kpis)
    assert gpu["calls"] == EXPECTED["gpu"]["calls"]
    assert gpu["gpu_seconds"] == EXPECTED["gpu"]["gpu_seconds"]
    assert gpu["cost"] == EXPECTED["gpu"]["cost"]


def test_excluded_runs_never_count(data: Dataset, manager: Any) -> None:
    """Adding more test, replay, what-if and child runs to a day changes none of its workflow rows."""
    day = data.today - timedelta(days=10)
    before = _rows(WorkflowDayRollup)
    c3 = Run.objects.get(workflow=data.claims, version=data.claims_v2, created_at__date=day, mode=Run.Mode.LIVE)
    at = c3.created_at
    for mode, version in ((Run.Mode.TEST, data.claims_draft), (Run.Mode.REPLAY, data.claims_v2)):
        Run.objects.filter(
            pk=Run.objects.create(workflow=data.claims, version=version, mode=mode, status="succeeded").pk
        ).update(created_at=at, finished_at=at)
    what_if = Run.objects.create(
        workflow=data.claims, version=data.claims_v2, mode=Run.Mode.WHAT_IF, status="failed", restarted_from=c3
    )
    Run.objects.filter(pk=what_if.pk).update(created_at=at, finished_at=at)
    rollups_rebuild(start=day, end=day)
    assert _rows(WorkflowDayRollup) == before
    assert WorkflowDayRollup.objects.filter(version=data.claims_draft).count() == 0


def _rows(model: Any) -> list[tuple[Any, ...]]:
    fields = [f.attname for f in model._meta.concrete_fields if f.attname not in ("id", "built_at")]
    return sorted(model.objects.values_list(*fields), key=repr)


def test_rebuilding_is_idempotent(data: Dataset) -> None:
    before = [_rows(model) for model in (WorkflowDayRollup, QueueDayRollup, EndpointDayRollup)]
    assert all(before), "the dataset fills every rollup table"
    rollups_rebuild(start=data.today - timedelta(days=45), end=data.today)
    rollups_rebuild(start=data.today - timedelta(days=45), end=data.today)
    assert [_rows(model) for model in (WorkflowDayRollup, QueueDayRollup, EndpointDayRollup)] == before


def test_the_overview_reads_rollups_not_raw_tables_in_pinned_queries(data: Dataset, manager: Any) -> None:
    flt = DashboardFilter(start=data.today - timedelta(days=89), end=data.today)
    overview_for_user(manager, flt, now=data.now)  # warm the per-user caches a request would also warm
    with CaptureQueriesContext(connection) as queries:
        overview = overview_for_user(manager, flt, now=data.now)
    assert overview.has_data
    sql = [query["sql"] for query in queries.captured_queries]
    assert not [s for s in sql if StepRun._meta.db_table in s], "no query reads step runs"
    assert not [s for s in sql if "inference_inferencecall" in s or "approvals_approvaldecision" in s]
    # The runs table is read only for the backlog "now": open runs through the status index, and open approval items
    # (by their state index) joined to their runs.
    for query in (s for s in sql if '"runs_run"' in s):
        assert '"runs_run"."status" IN' in query or '"approvals_approvalrequest"."state" = \'pending\'' in query, query
    assert len(sql) == 9, "\n".join(sql)


def test_filters_name_only_what_the_user_may_read(data: Dataset, outsider: Any, reviewer: Any, analyst: Any) -> None:
    assert not dashboard_workflows_for_user(outsider).exists()
    assert not dashboard_workflows_for_user(reviewer).exists(), "reviewers do not read dashboards"
    assert set(dashboard_workflows_for_user(analyst)) == {data.claims, data.invoices}
    with pytest.raises(Http404):
        overview_for_user(outsider, data.filter_x())
    with pytest.raises(Http404):
        queue_view_for_user(analyst, data.filter_x(), queue_id=data.queue.pk)
    with pytest.raises(Http404):
        endpoint_view_for_user(outsider, data.filter_x(), endpoint_id=data.cloud.pk)
    assert list(dashboard_endpoints_for_user(analyst)) == [data.cloud, data.gpu]
    assert not dashboard_queues_for_user(analyst).exists()
    with pytest.raises(Http404):
        overview_for_user(analyst, DashboardFilter(start=data.today, end=data.today, workflow_id=10**9))
    with pytest.raises(Http404):
        overview_for_user(
            analyst,
            DashboardFilter(
                start=data.today, end=data.today, workflow_id=data.invoices.pk, version_id=data.claims_v1.pk
            ),
        )


def test_an_empty_period_says_so(data: Dataset, manager: Any) -> None:
    flt = DashboardFilter(start=data.today - timedelta(days=400), end=data.today - timedelta(days=300))
    overview = overview_for_user(manager, flt, now=data.now)
    assert overview.has_data is False
    figures = _kpis(overview.kpis)
    assert figures["straight_through_rate"] is None and figures["cost_per_case"] is None and figures["roi"] is None
