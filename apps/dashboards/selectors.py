"""What the dashboards read: KPI figures for a filter, from the rollup tables only (never the raw run tables for a
long range). Every function takes the user and returns only what her permissions let her see.

THE CONTRACT between the rollups (models, tasks, these selectors) and the pages (widgets, charts, views). Fields may
be added; the names below are what the pages rely on. The functions (implemented below the data classes):

    overview_for_user(user, flt: DashboardFilter) -> Overview          (a process page: flt.workflow_id set)
    versions_for_user(user, flt: DashboardFilter) -> list[ProcessRow]  (one row per version of flt.workflow_id)
    queue_view_for_user(user, flt: DashboardFilter, *, queue_id: int) -> QueueView         (Http404 if unseen)
    endpoint_view_for_user(user, flt: DashboardFilter, *, endpoint_id: int) -> EndpointView (Http404 if unseen)
    dashboard_workflows_for_user(user) / dashboard_queues_for_user(user) / dashboard_endpoints_for_user(user)
        -> querysets of what the filter form and the index pages may offer her
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any


@dataclass(frozen=True)
class DashboardFilter:
    """What a dashboard shows: days `start`..`end` inclusive (in the server's zone), optionally one team, one
    workflow, one version of it. Parsed from the URL by apps.dashboards.forms.FilterForm."""

    start: date
    end: date
    team_id: int | None = None
    workflow_id: int | None = None
    version_id: int | None = None


@dataclass(frozen=True)
class Kpi:
    """One figure on a tile. `value` is None when there is nothing to compute it from (the tile says "no data").
    `unit`: "count", "percent" (0..100), "seconds", "hours", "money", "ratio", "months". `how` is the "How this
    is computed" text in plain words; `inputs` the inputs it used, labelled, as the page shows them."""

    key: str
    label: str
    value: Decimal | float | int | None
    unit: str
    how: str
    inputs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Percentiles:
    """p50/p95/p99 in seconds, merged from histogram buckets (within one bucket of the raw data's); None when
    `count` is 0."""

    count: int
    p50: float | None
    p95: float | None
    p99: float | None


@dataclass(frozen=True)
class CycleTime:
    """Cycle time of completed cases, and its split into machine time (steps running), queue wait (ready to
    claimed: steps queued, approvals waiting for a reviewer) and human time (claimed to decided)."""

    total: Percentiles
    machine: Percentiles
    queue: Percentiles
    human: Percentiles


@dataclass(frozen=True)
class DayPoint:
    """One day of a series."""

    day: date
    cases: int
    completed: int
    straight_through: int
    escalated: int
    failed: int
    cost: Decimal
    hours_saved: Decimal


@dataclass(frozen=True)
class BacklogBucket:
    """Open cases and open approvals by age: label like "< 1 h", "1–4 h", "4–24 h", "1–3 days", "> 3 days"."""

    label: str
    open_cases: int
    open_approvals: int


@dataclass(frozen=True)
class ProcessRow:
    """One workflow (or one version of it, on the process page) in a comparison table."""

    workflow_id: int
    slug: str
    name: str
    version_id: int | None
    version_number: int | None
    kpis: dict[str, Kpi]


@dataclass(frozen=True)
class Overview:
    """Everything the overview (or one process's page, with filter.workflow_id set) shows. `has_data` is False
    when the period holds no case at all: the page shows an empty state, not empty charts."""

    filter: DashboardFilter
    has_data: bool
    kpis: list[Kpi]
    cycle_time: CycleTime
    series: list[DayPoint]
    backlog: list[BacklogBucket]
    processes: list[ProcessRow]


@dataclass(frozen=True)
class QueueView:
    """A reviewers' queue over the filter: items opened / decided, time per item, breaches, load per reviewer."""

    queue_id: int
    key: str
    name: str
    has_data: bool
    kpis: list[Kpi]
    time_per_item: Percentiles
    wait: Percentiles
    series: list[dict[str, Any]]
    reviewers: list[dict[str, Any]]


@dataclass(frozen=True)
class EndpointView:
    """A model endpoint over the filter: calls, tokens, latency and time-to-first-token percentiles, errors by
    kind, cost, GPU-seconds."""

    endpoint_id: int
    name: str
    has_data: bool
    kpis: list[Kpi]
    latency: Percentiles
    ttft: Percentiles
    errors: dict[str, int]
    series: list[dict[str, Any]]
