"""Reads the dashboard pages need beyond apps.dashboards.selectors (the KPI contract): the cost breakdown per case,
a queue's time-per-item histogram, and an endpoint's model card (what it serves, its revision history as the
probes saw it, the workflows whose published versions use it, its evaluation results).

Like every selector these take the user and return only what she may read. The callers have already resolved the
queue or endpoint through the dashboards' own selectors (404 for what she may not see), so the functions taking
one trust it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db.models import QuerySet, Sum

from apps.approvals.models import ApprovalQueue
from apps.dashboards import histograms
from apps.dashboards.models import QueueDayRollup, WorkflowDayRollup
from apps.dashboards.selectors import DashboardFilter, dashboard_workflows_for_user, kpi_settings_get
from apps.evaluations.selectors import evaluation_reports_for_endpoint
from apps.inference.models import ModelEndpoint
from apps.inference.selectors import endpoint_observations
from apps.workflows.models import Workflow, WorkflowVersion

SECONDS_PER_HOUR = Decimal(3600)
# The rollups keep durations in buckets a factor 2^(1/4) wide; a chart groups four of them into one bucket per
# doubling, which is as fine as a reader can tell apart and keeps a 10 ms to 3 days spread to ~25 bars.
FINE_PER_CHART_BUCKET = 4


def visible_workflow_ids(user: Any, flt: DashboardFilter) -> list[int]:
    """The workflows `flt` covers among those `user` may read (the filter form has already refused any value she
    may not read, so this narrows and never widens)."""
    workflows = dashboard_workflows_for_user(user)
    if flt.team_id is not None:
        workflows = workflows.filter(team_id=flt.team_id)
    if flt.workflow_id is not None:
        workflows = workflows.filter(pk=flt.workflow_id)
    return list(workflows.order_by().values_list("pk", flat=True))


@dataclass(frozen=True)
class CostBreakdown:
    """What the period's cases cost, by part: model tokens, GPU time of self-hosted endpoints, reviewers' time.
    `per_case` divides each part by the cases (None without cases)."""

    cases: int
    model: Decimal
    gpu: Decimal
    reviewer: Decimal
    reviewer_hours: Decimal
    rate: Decimal
    currency: str
    # The parts above are rounded to cents for display; the total is rounded once from the exact sum, so it
    # equals the "Run cost" tile (the sum of rounded parts could be a cent off).
    exact_total: Decimal = Decimal(0)

    @property
    def total(self) -> Decimal:
        return self.exact_total.quantize(Decimal("0.01"))

    def per_case(self, part: Decimal) -> Decimal | None:
        return (part / self.cases).quantize(Decimal("0.0001")) if self.cases else None


def cost_breakdown(user: Any, flt: DashboardFilter) -> CostBreakdown:
    """The parts of the run cost over `flt` (one aggregate over the workflow rollups, plus the KPI settings row)."""
    rows = WorkflowDayRollup.objects.filter(
        day__gte=flt.start, day__lte=flt.end, workflow_id__in=visible_workflow_ids(user, flt)
    )
    if flt.version_id is not None:
        rows = rows.filter(version_id=flt.version_id)
    sums = rows.aggregate(cases=Sum("cases"), model=Sum("cost_model"), gpu=Sum("cost_gpu"), human=Sum("human_seconds"))
    settings_row = kpi_settings_get()
    hours = Decimal(str(sums["human"] or 0)) / SECONDS_PER_HOUR
    exact = Decimal(sums["model"] or 0) + Decimal(sums["gpu"] or 0) + hours * settings_row.reviewer_hourly_rate
    return CostBreakdown(
        cases=int(sums["cases"] or 0),
        model=Decimal(sums["model"] or 0).quantize(Decimal("0.01")),
        gpu=Decimal(sums["gpu"] or 0).quantize(Decimal("0.01")),
        reviewer=(hours * settings_row.reviewer_hourly_rate).quantize(Decimal("0.01")),
        reviewer_hours=hours.quantize(Decimal("0.01")),
        rate=settings_row.reviewer_hourly_rate,
        currency=settings_row.currency,
        exact_total=exact,
    )


def chart_buckets(counts: list[int]) -> tuple[list[float], list[int]]:
    """A rollup histogram (apps.dashboards.histograms buckets) regrouped for a chart: one bucket per doubling,
    from the first non-empty to the last non-empty one. Returns (edges in seconds, counts); ([], []) when empty.
    The first edge is the floor (10 ms) when the fastest items fall under it."""
    nonzero = [index for index, count in enumerate(counts) if count]
    if not nonzero:
        return [], []
    # Bucket 0 (under the floor) is grouped with buckets 1..3, so groups start at 0, 4, 8… of the fine index.
    first = nonzero[0] // FINE_PER_CHART_BUCKET
    last = nonzero[-1] // FINE_PER_CHART_BUCKET
    edges: list[float] = []
    grouped: list[int] = []
    for group in range(first, last + 1):
        low = group * FINE_PER_CHART_BUCKET
        grouped.append(sum(counts[low : low + FINE_PER_CHART_BUCKET]))
        edges.append(histograms.lower_edge(max(low, 1)) if low else histograms.FLOOR_SECONDS / 2)
    top = (last + 1) * FINE_PER_CHART_BUCKET
    edges.append(histograms.lower_edge(min(top, histograms.BUCKETS - 1)))
    return edges, grouped


def queue_time_per_item(user: Any, flt: DashboardFilter, queue: ApprovalQueue) -> tuple[list[float], list[int]]:
    """The time-per-item histogram of `queue`'s items over `flt` (decided items' handling time), as chart buckets.
    With a team or process in the filter, only that workflow's items count, as on the rest of the queue page."""
    rows: QuerySet[QueueDayRollup] = QueueDayRollup.objects.filter(queue=queue, day__gte=flt.start, day__lte=flt.end)
    if flt.workflow_id is not None or flt.team_id is not None:
        rows = rows.filter(workflow_id__in=visible_workflow_ids(user, flt))
    merged = histograms.merged(rows.values_list("hist_time_per_item", flat=True))
    return chart_buckets(merged)


# Model cards ------------------------------------------------------------------------------------------------------

# Config keys of step types that name a model endpoint (llm.*: model, fallbacks, routing.small/large; knowledge and
# agent steps may name one too). A value that is a list is a list of endpoint names.
ENDPOINT_KEYS = {"model", "fallbacks", "small", "large", "endpoint", "embedding_endpoint"}


def _steps(node: Any) -> Iterator[dict[str, Any]]:
    """Every step in a graph, at any depth (lanes of foreach, parallel and branches hold steps of their own)."""
    if isinstance(node, dict):
        if isinstance(node.get("type"), str) and isinstance(node.get("config"), dict):
            yield node
        for value in node.values():
            yield from _steps(value)
    elif isinstance(node, list):
        for item in node:
            yield from _steps(item)


def _names(config: Any) -> Iterator[str]:
    if isinstance(config, dict):
        for key, value in config.items():
            if key in ENDPOINT_KEYS:
                if isinstance(value, str):
                    yield value
                elif isinstance(value, list):
                    yield from (item for item in value if isinstance(item, str))
            if isinstance(value, dict):
                yield from _names(value)


def graph_uses_endpoint(graph: Any, endpoint: ModelEndpoint) -> list[str]:
    """The keys of the steps in `graph` that call `endpoint`: by name, or (an llm step naming no model) because
    it is the default endpoint."""
    keys = []
    for step in _steps(graph):
        config = step["config"]
        names = set(_names(config))
        if endpoint.name in names or (
            endpoint.is_default and str(step["type"]).startswith("llm.") and not config.get("model")
        ):
            keys.append(str(step.get("key", "")))
    return keys


@dataclass(frozen=True)
class EndpointUse:
    workflow: Workflow
    version_numbers: list[int]
    step_keys: list[str]


def endpoint_workflows(user: Any, endpoint: ModelEndpoint) -> list[EndpointUse]:
    """The workflows `user` may read whose published versions call `endpoint`, with those versions and the steps.
    Scans the published graphs (one query; graphs are small and there is one row per published version)."""
    visible = dashboard_workflows_for_user(user).order_by()
    versions = (
        WorkflowVersion.objects.filter(state=WorkflowVersion.State.PUBLISHED, workflow__in=visible.values("pk"))
        .select_related("workflow")
        .order_by("workflow__name", "-number")
    )
    uses: dict[int, EndpointUse] = {}
    for version in versions:
        keys = graph_uses_endpoint(version.graph, endpoint)
        if not keys:
            continue
        use = uses.setdefault(version.workflow_id, EndpointUse(version.workflow, [], []))
        use.version_numbers.append(version.number)
        use.step_keys.extend(key for key in keys if key not in use.step_keys)
    return list(uses.values())


@dataclass(frozen=True)
class Revision:
    """One stretch of what the endpoint served, as the probes (or, before probes were kept, its edits) saw it."""

    model_id: str
    revision: str
    server_label: str
    max_input_tokens: int | None
    max_total_tokens: int | None
    since: Any
    until: Any
    probes: int | None


def endpoint_revisions(endpoint: ModelEndpoint) -> list[Revision]:
    """The endpoint's revision history, newest first: the probes' observations, or for an endpoint not probed
    since observations began, the distinct model / revision pairs of its change history."""
    observed = [
        Revision(
            model_id=row.model_id,
            revision=row.revision,
            server_label=row.server_label,
            max_input_tokens=row.max_input_tokens,
            max_total_tokens=row.max_total_tokens,
            since=row.first_seen_at,
            until=row.last_seen_at,
            probes=row.probe_count,
        )
        for row in endpoint_observations(endpoint)
    ]
    if observed:
        return observed
    revisions: list[Revision] = []
    seen: tuple[str, str] | None = None
    for row in endpoint.history.order_by("history_date", "history_id"):
        key = (row.model_id, row.revision)
        if key == seen or not any(key):
            continue
        seen = key
        revisions.append(
            Revision(
                model_id=row.model_id,
                revision=row.revision,
                server_label=row.server_label,
                max_input_tokens=row.max_input_tokens,
                max_total_tokens=row.max_total_tokens,
                since=row.history_date,
                until=None,
                probes=None,
            )
        )
    return revisions[::-1]


def endpoint_evaluations(user: Any, endpoint: ModelEndpoint, *, limit: int = 10) -> list[Any]:
    """The newest finished evaluation reports whose checked steps called `endpoint`, of workflows `user` may read."""
    return list(evaluation_reports_for_endpoint(user, endpoint.name)[:limit])
