"""Log-scale histograms: percentiles merged across days land in the same bucket as the raw data's percentiles,
whatever the durations (property-style over seeded random samples), in Python and through the rollup tables."""

from __future__ import annotations

import math
import random
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest

from apps.dashboards import histograms
from apps.dashboards.models import WorkflowDayRollup
from apps.dashboards.selectors import DashboardFilter, overview_for_user
from apps.workflows.models import Workflow, WorkflowVersion

QUANTILES = (0.5, 0.95, 0.99)


def _durations(rng: random.Random, n: int) -> list[float]:
    """Durations a process really shows: mostly seconds to minutes, a long tail into days, a few zeros."""
    kind = rng.random()
    if kind < 0.1:
        return [0.0] * n
    return [
        rng.lognormvariate(rng.uniform(0, 8), rng.uniform(0.2, 3)) if rng.random() > 0.02 else 0.0 for _ in range(n)
    ]


def test_bucket_edges_are_consistent() -> None:
    for index in range(1, histograms.BUCKETS - 1):
        low, high = histograms.lower_edge(index), histograms.upper_edge(index)
        assert histograms.bucket_of(low) == index
        assert histograms.bucket_of(math.nextafter(high, 0)) == index
        assert low <= histograms.representative(index) < high
        assert high / low == pytest.approx(histograms.RATIO)
    assert histograms.bucket_of(0) == 0 and histograms.bucket_of(-3) == 0
    assert histograms.bucket_of(10**12) == histograms.BUCKETS - 1


@pytest.mark.parametrize("seed", range(200))
def test_merged_percentiles_are_within_one_bucket_of_the_raw_ones(seed: int) -> None:
    rng = random.Random(seed)
    days = [_durations(rng, rng.randint(0, 60)) for _ in range(rng.randint(1, 40))]
    merged = histograms.merged(histograms.histogram_of(day) for day in days)
    everything = [value for day in days for value in day]
    assert merged == histograms.histogram_of(everything)
    for q in QUANTILES:
        raw = histograms.raw_percentile(everything, q)
        estimate = histograms.percentile(merged, q)
        if raw is None:
            assert estimate is None
            continue
        assert estimate is not None
        assert histograms.bucket_of(estimate) == histograms.bucket_of(raw)
        if histograms.FLOOR_SECONDS <= raw < histograms.lower_edge(histograms.BUCKETS - 1):
            # The stated bound, between the floor and the overflow bucket: a factor of at most √R (9 %) either way.
            assert raw / math.sqrt(histograms.RATIO) <= estimate * (1 + 1e-9)
            assert estimate <= raw * math.sqrt(histograms.RATIO) * (1 + 1e-9)


@pytest.mark.django_db
@pytest.mark.parametrize("seed", range(5))
def test_the_overview_merges_days_in_the_database_the_same_way(seed: int, analyst: Any, manager: Any) -> None:
    rng = random.Random(1000 + seed)
    workflow = Workflow.objects.create(name="Merge", slug=f"merge-{seed}", owner=analyst)
    versions = [
        WorkflowVersion.objects.create(
            workflow=workflow, number=n, state="published", graph={"steps": [], "edges": []}, input_schema={},
            checksum=f"{n:064d}", created_by=analyst,
        )
        for n in (1, 2)
    ]  # fmt: skip
    start = date(2026, 6, 1)
    everything: list[float] = []
    rows = []
    for offset in range(rng.randint(20, 60)):
        for version in versions:
            durations = [value for value in _durations(rng, rng.randint(1, 30)) if value > 0] or [1.0]
            everything.extend(durations)
            rows.append(
                WorkflowDayRollup(
                    day=start + timedelta(days=offset),
                    workflow=workflow,
                    version=version,
                    cases=len(durations),
                    completed=len(durations),
                    cost_model=Decimal(0),
                    cost_gpu=Decimal(0),
                    hist_total=histograms.histogram_of(durations),
                    hist_machine=histograms.histogram_of(d / 2 for d in durations),
                )
            )
    WorkflowDayRollup.objects.bulk_create(rows)
    flt = DashboardFilter(start=start, end=start + timedelta(days=90), workflow_id=workflow.pk)
    cycle = overview_for_user(manager, flt).cycle_time
    assert cycle.total.count == len(everything)
    for q, name in zip(QUANTILES, ("p50", "p95", "p99"), strict=True):
        raw = histograms.raw_percentile(everything, q)
        assert histograms.bucket_of(getattr(cycle.total, name)) == histograms.bucket_of(raw)
        raw_machine = histograms.raw_percentile([d / 2 for d in everything], q)
        assert histograms.bucket_of(getattr(cycle.machine, name)) == histograms.bucket_of(raw_machine)
