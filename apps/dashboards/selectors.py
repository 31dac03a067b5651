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

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser, AnonymousUser
from django.core.exceptions import EmptyResultSet
from django.db import connection
from django.db.models import Case, Count, DecimalField, Exists, F, OuterRef, Q, QuerySet, Sum, Value, When
from django.db.models.functions import Coalesce
from django.http import Http404
from django.utils import timezone

from apps.approvals.models import ApprovalQueue, ApprovalRequest
from apps.approvals.selectors import worked_queue_ids
from apps.core.permissions import restrict
from apps.dashboards import histograms
from apps.dashboards.models import (
    EndpointDayRollup,
    KpiSettings,
    QueueDayRollup,
    WorkflowDayRollup,
    WorkflowKpiInput,
)
from apps.inference.models import ModelEndpoint
from apps.runs.models import Run
from apps.workflows.models import Workflow, WorkflowVersion
from apps.workflows.selectors import workflow_list_for_user

User = get_user_model()


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


# ---------------------------------------------------------------------------------------------------------------
# Implementation. Everything below reads the rollup tables (apps.dashboards.models.*DayRollup), the KPI inputs, and
# for the backlog ("now") the open runs and approvals by their state indexes; never the closed raw rows.

AnyUser = AbstractUser | AnonymousUser

HUNDRED = Decimal(100)
SECONDS_PER_HOUR = Decimal(3600)
DAYS_PER_MONTH = Decimal("30.4375")  # 365.25 / 12
AT_RISK_FRACTION = 0.8
# How many restarts back the backlog follows a case to its first run for its age (one join per step; chains
# longer than this are rare and then age from the run this many steps back).
MAX_RESTART_DEPTH = 3
BACKLOG_BUCKETS: list[tuple[str, float | None]] = [
    ("< 1 h", 3600.0),
    ("1–4 h", 4 * 3600.0),
    ("4–24 h", 24 * 3600.0),
    ("1–3 days", 3 * 86400.0),
    ("> 3 days", None),
]
WORKFLOW_SUMS = (
    "cases",
    "completed",
    "straight_through",
    "escalated",
    "escalated_completed",
    "failed",
    "incidents",
    "failed_or_incident",
    "cancelled",
    "restarts",
    "approvals",
    "decisions",
    "overridden",
    "audit_decisions",
    "audit_agreed",
    "sla_due",
    "sla_breached",
    "prompt_tokens",
    "generated_tokens",
    "model_calls",
    "cost_model",
    "cost_gpu",
    "gpu_seconds",
    "human_seconds",
    "human_seconds_completed",
)
CYCLE_HISTOGRAMS = ("hist_total", "hist_machine", "hist_queue", "hist_human")


def _days(flt: DashboardFilter) -> Iterator[date]:
    """Every day of the filter's period, first to last (a series has a point for each, data or not)."""
    for offset in range((flt.end - flt.start).days + 1):
        yield flt.start + timedelta(days=offset)


def can_view_dashboards(user: AnyUser) -> bool:
    """Whether `user` may read any dashboard at all (the role permission)."""
    return bool(user.is_authenticated and user.is_active and user.has_perm("dashboards.view_dashboards"))


def can_change_kpi_inputs(user: AnyUser) -> bool:
    """Whether `user` may change the KPI inputs (managers and admins)."""
    return bool(user.is_authenticated and user.is_active and user.has_perm("dashboards.change_kpi_inputs"))


def dashboard_workflows_for_user(user: AnyUser) -> QuerySet[Workflow]:
    """The workflows whose figures `user` may read: those she may view, if she may read dashboards at all."""
    if not can_view_dashboards(user):
        return Workflow.objects.none()
    return workflow_list_for_user(user)


def dashboard_queues_for_user(user: AnyUser) -> QuerySet[ApprovalQueue]:
    """The queues whose figures `user` may read: those she works or leads; every queue for those who read every
    run anyway (managers, admins, auditors hold runs.view_run as a role), since a queue's figures reveal nothing
    about the runs behind it that they could not read already."""
    if not can_view_dashboards(user):
        return ApprovalQueue.objects.none()
    if user.is_superuser or user.has_perm("runs.view_run"):
        return ApprovalQueue.objects.order_by("name")
    return ApprovalQueue.objects.filter(Q(pk__in=worked_queue_ids(user)) | Q(lead_id=user.pk)).order_by("name")


def dashboard_endpoints_for_user(user: AnyUser) -> QuerySet[ModelEndpoint]:
    """The model endpoints whose usage and cost `user` may read (inference.view_modelendpoint)."""
    if not can_view_dashboards(user):
        return ModelEndpoint.objects.none()
    return restrict(ModelEndpoint.objects.order_by("name"), user, "inference.view_modelendpoint")


def kpi_settings_get() -> KpiSettings:
    """The one KPI settings row, created with its defaults on first read."""
    settings_row, _ = KpiSettings.objects.get_or_create(pk=KpiSettings.SINGLETON_PK)
    return settings_row


def _visible_workflow_ids(user: AnyUser, flt: DashboardFilter) -> list[int]:
    """The workflows the filter covers among those `user` may read; Http404 when the filter names a workflow or
    version she may not read (or that does not exist), so nobody learns what exists by guessing ids."""
    workflows = dashboard_workflows_for_user(user)
    if flt.team_id is not None:
        workflows = workflows.filter(team_id=flt.team_id)
    if flt.workflow_id is not None:
        workflows = workflows.filter(pk=flt.workflow_id)
    ids = list(workflows.order_by().values_list("pk", flat=True))
    if flt.workflow_id is not None and not ids:
        raise Http404("No such workflow.")
    if (
        flt.version_id is not None
        and not WorkflowVersion.objects.filter(pk=flt.version_id, workflow_id__in=ids).exists()
    ):
        raise Http404("No such version.")
    return ids


def _workflow_rows(flt: DashboardFilter, workflow_ids: list[int]) -> QuerySet[WorkflowDayRollup]:
    rows = WorkflowDayRollup.objects.filter(day__gte=flt.start, day__lte=flt.end, workflow_id__in=workflow_ids)
    if flt.version_id is not None:
        rows = rows.filter(version_id=flt.version_id)
    return rows


def _merged_histograms(
    rows: QuerySet[Any], fields: tuple[str, ...], group_by: str | None = None
) -> dict[Any, list[list[int]]]:
    """Per group (None when `group_by` is None): the element-wise sums of the histogram `fields` over `rows`.

    The sum runs in PostgreSQL (unnest WITH ORDINALITY, then GROUP BY bucket), so a long range sends back one row
    per bucket instead of every array."""
    table = rows.model._meta.db_table
    try:
        inner_sql, inner_params = rows.order_by().values("pk").query.sql_with_params()
    except EmptyResultSet:  # a filter on an empty id list: nothing to merge, and no query to send
        return {}
    names = ", ".join(f"r.{name}" for name in fields)
    aliases = ", ".join(f"a{index}" for index in range(len(fields)))
    sums = ", ".join(f"sum(a{index})" for index in range(len(fields)))
    group = f"r.{group_by}" if group_by else "NULL"
    # Most buckets of an array are zeros (a second-scale duration sits past ~27 empty sub-second buckets): dropping
    # them before the GROUP BY halves what PostgreSQL aggregates.
    nonzero = " OR ".join(f"a{index} <> 0" for index in range(len(fields)))
    sql = (
        f"SELECT {group}, t.i, {sums} FROM {table} r, unnest({names}) WITH ORDINALITY AS t({aliases}, i) "
        f"WHERE r.id IN ({inner_sql}) AND ({nonzero}) GROUP BY 1, 2"
    )
    result: dict[Any, list[list[int]]] = {}
    with connection.cursor() as cursor:
        cursor.execute(sql, inner_params)
        for key, index, *values in cursor.fetchall():
            arrays = result.setdefault(key, [[] for _ in fields])
            for array, value in zip(arrays, values, strict=True):
                if value is None:
                    continue
                if len(array) < index:
                    array.extend([0] * (index - len(array)))
                array[index - 1] = int(value)
    return result


def _percentiles(counts: list[int]) -> Percentiles:
    n = sum(counts)
    if not n:
        return Percentiles(count=0, p50=None, p95=None, p99=None)
    return Percentiles(
        count=n,
        p50=histograms.percentile(counts, 0.50),
        p95=histograms.percentile(counts, 0.95),
        p99=histograms.percentile(counts, 0.99),
    )


def _cycle_time(arrays: list[list[int]] | None) -> CycleTime:
    arrays = arrays or [[] for _ in CYCLE_HISTOGRAMS]
    total, machine, queue, human = (_percentiles(array) for array in arrays)
    return CycleTime(total=total, machine=machine, queue=queue, human=human)


@dataclass
class _Inputs:
    """The KPI inputs a figure needs, read once per request."""

    rate: Decimal
    currency: str
    baseline_minutes: dict[int, Decimal]
    names: dict[int, str]
    realisation: dict[int, Decimal]
    build_cost: dict[int, Decimal]

    def money(self, value: Decimal) -> str:
        return f"{value.quantize(Decimal('0.01'))} {self.currency}"


def _inputs_for(workflow_ids: list[int], workflows: list[Workflow] | None = None) -> _Inputs:
    settings_row = kpi_settings_get()
    if workflows is None:
        workflows = list(Workflow.objects.filter(pk__in=workflow_ids).only("pk", "name", "baseline_minutes_per_case"))
    baselines = {workflow.pk: workflow.baseline_minutes_per_case for workflow in workflows}
    realisation: dict[int, Decimal] = {pk: HUNDRED for pk in workflow_ids}
    build_cost: dict[int, Decimal] = {}
    for workflow_id, percent, cost in WorkflowKpiInput.objects.filter(workflow_id__in=workflow_ids).values_list(
        "workflow_id", "realisation_percent", "build_cost"
    ):
        realisation[workflow_id] = percent
        if cost is not None:
            build_cost[workflow_id] = cost
    return _Inputs(
        rate=settings_row.reviewer_hourly_rate,
        currency=settings_row.currency,
        baseline_minutes=baselines,
        names={workflow.pk: workflow.name for workflow in workflows},
        realisation=realisation,
        build_cost=build_cost,
    )


def _zero_sums() -> dict[str, Any]:
    return {name: (Decimal(0) if name.startswith("cost_") else 0) for name in WORKFLOW_SUMS}


def _add(into: dict[str, Any], row: dict[str, Any]) -> None:
    for name in WORKFLOW_SUMS:
        into[name] += row[name] or 0


def _saved_minutes(sums: dict[str, Any], workflow_id: int, inputs: _Inputs) -> Decimal:
    """Minutes saved by the completed cases in `sums` of one workflow: each saves baseline × realisation, minus
    the human minutes still spent on it (a straight-through case spends none, so saves the full amount). Not
    clipped at zero: a case that cost more human time than the baseline is a real loss and shows as one."""
    per_case = inputs.baseline_minutes.get(workflow_id, Decimal(0)) * inputs.realisation.get(workflow_id, HUNDRED)
    return per_case / HUNDRED * sums["completed"] - Decimal(str(sums["human_seconds_completed"])) / 60


def _ratio(numerator: int, denominator: int) -> float | None:
    return round(100.0 * numerator / denominator, 4) if denominator else None


def _percent_text(value: Decimal) -> str:
    return f"{value.normalize():f} %"


def _figures(
    sums: dict[str, Any],
    per_workflow: dict[int, dict[str, Any]],
    inputs: _Inputs,
    cycle: CycleTime,
    flt: DashboardFilter,
) -> dict[str, Kpi]:
    """Every KPI of one slice (the whole filter, one workflow or one version), from its summed rollup counters,
    the same sums per workflow (for the per-workflow inputs: baseline, realisation, build cost) and its merged
    cycle-time histograms. The formulas are faces.md 3.2's; each Kpi says its own in `how`."""
    days = (flt.end - flt.start).days + 1
    cases, completed = sums["cases"], sums["completed"]
    reviewer_cost = Decimal(str(sums["human_seconds"])) / SECONDS_PER_HOUR * inputs.rate
    model_cost = Decimal(sums["cost_model"])
    gpu_cost = Decimal(sums["cost_gpu"])
    run_cost = model_cost + gpu_cost + reviewer_cost
    saved_minutes = sum(
        (_saved_minutes(workflow_sums, workflow_id, inputs) for workflow_id, workflow_sums in per_workflow.items()),
        Decimal(0),
    )
    hours_saved = saved_minutes / 60
    value = hours_saved * inputs.rate
    money_inputs = {
        "Model cost (tokens × price per 1k)": inputs.money(model_cost),
        "GPU cost (GPU-seconds × hourly price)": inputs.money(gpu_cost),
        "Reviewer cost": f"{(Decimal(str(sums['human_seconds'])) / 60).quantize(Decimal('0.1'))} min × "
        f"{inputs.money(inputs.rate)} per hour = {inputs.money(reviewer_cost)}",
    }

    def minutes(workflow_id: int) -> str:
        return f"{inputs.baseline_minutes.get(workflow_id, Decimal(0)).normalize():f} min"

    def realisation(workflow_id: int) -> str:
        return _percent_text(inputs.realisation.get(workflow_id, HUNDRED))

    if len(per_workflow) == 1:
        only = next(iter(per_workflow))
        baselines = {"Baseline minutes per case": minutes(only), "Realisation factor": realisation(only)}
    else:
        baselines = {
            f"Baseline of {inputs.names.get(pk, str(pk))}": f"{minutes(pk)} × {realisation(pk)} realisation"
            for pk in per_workflow
        }
    build_ids = [pk for pk in per_workflow if pk in inputs.build_cost]
    payback: Decimal | None = None
    payback_inputs: dict[str, str] = {}
    if build_ids:
        build_total = sum((inputs.build_cost[pk] for pk in build_ids), Decimal(0))
        net = Decimal(0)
        for pk in build_ids:
            workflow_sums = per_workflow[pk]
            workflow_value = _saved_minutes(workflow_sums, pk, inputs) / 60 * inputs.rate
            workflow_cost = (
                Decimal(workflow_sums["cost_model"])
                + Decimal(workflow_sums["cost_gpu"])
                + Decimal(str(workflow_sums["human_seconds"])) / SECONDS_PER_HOUR * inputs.rate
            )
            net += workflow_value - workflow_cost
        monthly_net = net / days * DAYS_PER_MONTH
        payback_inputs = {
            "Build cost": inputs.money(build_total),
            "Net value per month": inputs.money(monthly_net),
        }
        if monthly_net > 0:
            payback = (build_total / monthly_net).quantize(Decimal("0.01"))
    cycle_inputs = {"Completed cases measured": str(cycle.total.count)}

    def kpi(key: str, label: str, value: Any, unit: str, how: str, kpi_inputs: dict[str, str]) -> Kpi:
        return Kpi(key=key, label=label, value=value, unit=unit, how=how, inputs=kpi_inputs)

    figures = [
        kpi(
            "cases",
            "Cases",
            cases,
            "count",
            "Top-level live runs of published versions that started in the period. Test, replay, what-if and "
            "sub-workflow runs are not cases (a sub-workflow's work counts in its parent case); a restart continues "
            "its case and is not a new one.",
            {"Period": f"{flt.start} to {flt.end} ({days} days)"},
        ),
        kpi(
            "throughput",
            "Completed cases",
            completed,
            "count",
            "Cases that started in the period and have finished successfully (a restarted case counts by its last "
            "run). Counted by the day a case started, like every figure here, so the rates and costs beside it "
            "describe the same cases: a case that started before the period and finished in it counts in the "
            "period it started in.",
            {"Per day": f"{completed / days:.1f}", "Cases": str(cases)},
        ),
        kpi(
            "straight_through_rate",
            "Straight-through rate",
            _ratio(completed - sums["escalated_completed"], completed),
            "percent",
            "Completed cases that no person touched (no approval step) ÷ completed cases.",
            {"Straight-through": str(completed - sums["escalated_completed"]), "Completed": str(completed)},
        ),
        kpi(
            "escalation_rate",
            "Escalation rate",
            _ratio(sums["escalated_completed"], completed),
            "percent",
            "Completed cases that went to a person at least once ÷ completed cases. Counted over completed cases on "
            "both sides so it and the straight-through rate add up to 100 %.",
            {"Escalated": str(sums["escalated_completed"]), "Completed": str(completed)},
        ),
        kpi(
            "override_rate",
            "Override rate",
            _ratio(sums["overridden"], sums["decisions"]),
            "percent",
            "Reviewers' decisions that rejected or edited what the model proposed ÷ all reviewers' decisions.",
            {"Overridden": str(sums["overridden"]), "Decisions": str(sums["decisions"])},
        ),
        kpi(
            "audit_agreement",
            "Audit-sample agreement",
            _ratio(sums["audit_agreed"], sums["audit_decisions"]),
            "percent",
            "On items drawn for the audit sample: decisions that approved the model's proposal unchanged ÷ "
            "decisions on audit-sample items.",
            {"Agreed": str(sums["audit_agreed"]), "Audit-sample decisions": str(sums["audit_decisions"])},
        ),
        kpi(
            "cycle_time_p50",
            "Cycle time, median",
            cycle.total.p50,
            "seconds",
            "From a case's start to its finish, completed cases only; read from log-scale histograms, so within "
            "±9 % of the exact value.",
            cycle_inputs,
        ),
        kpi(
            "cycle_time_p95",
            "Cycle time, 95th percentile",
            cycle.total.p95,
            "seconds",
            "As the median, at the 95th percentile: 1 case in 20 takes longer.",
            cycle_inputs,
        ),
        kpi(
            "cycle_time_p99",
            "Cycle time, 99th percentile",
            cycle.total.p99,
            "seconds",
            "As the median, at the 99th percentile: 1 case in 100 takes longer.",
            cycle_inputs,
        ),
        kpi(
            "sla_breach_rate",
            "SLA breach rate",
            _ratio(sums["sla_breached"], sums["sla_due"]),
            "percent",
            "Approval items with a due time that were decided after it, or expired undecided ÷ approval items with "
            "a due time that were decided or expired.",
            {"Breached": str(sums["sla_breached"]), "With a due time": str(sums["sla_due"])},
        ),
        kpi(
            "failure_rate",
            "Failure and incident rate",
            _ratio(sums["failed_or_incident"], cases),
            "percent",
            "Cases that failed or raised an incident (a step a person had to resolve) ÷ cases.",
            {
                "Failed": str(sums["failed"]),
                "With an incident": str(sums["incidents"]),
                "Cases": str(cases),
            },
        ),
        kpi(
            "run_cost",
            "Run cost",
            run_cost.quantize(Decimal("0.01")),
            "money",
            "Model calls (tokens × the endpoint's price per 1k; GPU-seconds × hourly GPU price for self-hosted "
            "endpoints) + reviewers' handling time × loaded hourly rate.",
            money_inputs,
        ),
        kpi(
            "cost_per_case",
            "Cost per case",
            (run_cost / cases).quantize(Decimal("0.0001")) if cases else None,
            "money",
            "Run cost ÷ cases.",
            {**money_inputs, "Cases": str(cases)},
        ),
        kpi(
            "hours_saved",
            "Hours saved",
            hours_saved.quantize(Decimal("0.01")),
            "hours",
            "For each completed case: baseline minutes × realisation factor − the human minutes still spent on it "
            "(a straight-through case spends none), summed and shown in hours.",
            {
                **baselines,
                "Completed cases": str(completed),
                "Human minutes on them": f"{sums['human_seconds_completed'] / 60:.1f}",
            },
        ),
        kpi(
            "time_saved_per_case",
            "Time saved per case",
            float(saved_minutes * 60 / completed) if completed else None,
            "seconds",
            "Hours saved ÷ completed cases.",
            {**baselines, "Completed cases": str(completed)},
        ),
        kpi(
            "value",
            "Value",
            value.quantize(Decimal("0.01")),
            "money",
            "Hours saved × the loaded hourly rate.",
            {
                "Hours saved": f"{hours_saved.quantize(Decimal('0.01'))}",
                "Loaded hourly rate": inputs.money(inputs.rate),
            },
        ),
        kpi(
            "roi",
            "Return on investment",
            ((value - run_cost) / run_cost).quantize(Decimal("0.0001")) if run_cost > 0 else None,
            "ratio",
            "(Value − run cost) ÷ run cost. 1.0 means every unit spent came back twice.",
            {"Value": inputs.money(value), "Run cost": inputs.money(run_cost)},
        ),
        kpi(
            "payback",
            "Payback",
            payback,
            "months",
            "One-off build cost ÷ net value per month (value − run cost, scaled from the period to a month); "
            "shown only where a build cost is entered and the net value is positive.",
            payback_inputs or {"Build cost": "not entered"},
        ),
    ]
    return {figure.key: figure for figure in figures}


def _workflow_sums(rows: QuerySet[WorkflowDayRollup], group: tuple[str, ...]) -> list[dict[str, Any]]:
    return list(rows.order_by().values(*group).annotate(**{name: Sum(name) for name in WORKFLOW_SUMS}))


def _backlog(
    workflow_ids: list[int], flt: DashboardFilter, now: datetime
) -> tuple[list[BacklogBucket], dict[str, int]]:
    """Open cases and open approval items by age, now, with the approvals at risk of breaching their SLA. Reads
    only open rows, through the runs' status index and the approvals' state index.

    An open case is an open live top-level run that no later live run restarts: a restart still running is its
    case's open run, so the case counts once, by the newest run of its chain. Its age is the case's, from the
    first run of the chain (followed up to MAX_RESTART_DEPTH restarts back; a longer chain ages from there)."""
    restarted = Run.objects.filter(restarted_from=OuterRef("pk"), mode=Run.Mode.LIVE, parent_step_run__isnull=True)
    back = "restarted_from__"
    runs = (
        Run.objects.filter(
            workflow_id__in=workflow_ids,
            status__in=[Run.Status.PENDING, Run.Status.RUNNING],
            mode=Run.Mode.LIVE,
            parent_step_run__isnull=True,
        )
        .filter(~Exists(restarted))
        .annotate(
            case_created_at=Coalesce(
                *[F(back * depth + "created_at") for depth in range(MAX_RESTART_DEPTH, 0, -1)], F("created_at")
            )
        )
    )
    approvals = ApprovalRequest.objects.filter(
        state=ApprovalRequest.State.PENDING, run__workflow_id__in=workflow_ids, run__mode=Run.Mode.LIVE
    )
    if flt.version_id is not None:
        runs = runs.filter(version_id=flt.version_id)
        approvals = approvals.filter(run__version_id=flt.version_id)

    def buckets(queryset: QuerySet[Any], since: str = "created_at", **extra: Any) -> dict[str, int]:
        aggregates: dict[str, Any] = dict(extra)
        lower = 0.0
        for index, (_label, upper) in enumerate(BACKLOG_BUCKETS):
            condition = Q(**{f"{since}__lte": now - timedelta(seconds=lower)})
            if upper is not None:
                condition &= Q(**{f"{since}__gt": now - timedelta(seconds=upper)})
            aggregates[f"bucket_{index}"] = Count("pk", filter=condition)
            lower = upper or lower
        counts = queryset.aggregate(**aggregates)
        return {key: value or 0 for key, value in counts.items()} | {
            label: counts[f"bucket_{index}"] or 0 for index, (label, _upper) in enumerate(BACKLOG_BUCKETS)
        }

    open_cases = buckets(runs, since="case_created_at")
    # At risk: open and past 80 % of the time it was given (created → due), overdue ones included.
    with_due = Q(due_at__isnull=False)
    open_items = buckets(
        approvals,
        with_due=Count("pk", filter=with_due),
        at_risk=Count(
            # datetime minus an expression is an expression to Django (its __rsub__); the stubs do not know.
            "pk",
            filter=with_due & Q(created_at__lte=now - (F("due_at") - F("created_at")) * AT_RISK_FRACTION),  # type: ignore[operator]
        ),
        overdue=Count("pk", filter=with_due & Q(due_at__lt=now)),
    )
    risk = {key: open_items[key] for key in ("with_due", "at_risk", "overdue")}
    rows = [
        BacklogBucket(label=label, open_cases=open_cases[label] or 0, open_approvals=open_items[label] or 0)
        for label, _upper in BACKLOG_BUCKETS
    ]
    return rows, risk


SERIES_SUMS = ("cases", "completed", "escalated_completed", "failed_or_incident", "cost_model", "cost_gpu")


def _series(flt: DashboardFilter, rows: QuerySet[WorkflowDayRollup], inputs: _Inputs) -> list[DayPoint]:
    """One point per day of the period (zeros on days without cases), summed by day in PostgreSQL: the baseline ×
    realisation of each workflow enters the sum as a per-workflow factor, so a year across many processes is one
    row per day, not one per day and process."""
    factor = Case(
        *[
            When(workflow_id=pk, then=Value(inputs.baseline_minutes.get(pk, Decimal(0)) * percent / HUNDRED))
            for pk, percent in inputs.realisation.items()
        ],
        default=Value(Decimal(0)),
        output_field=DecimalField(max_digits=20, decimal_places=6),
    )
    # Annotation names differ from the columns: an aggregate over F("completed") must see the column, not a sum.
    per_day = {
        row["day"]: {name.removeprefix("total_"): value for name, value in row.items()}
        for row in rows.order_by()
        .values("day")
        .annotate(
            **{f"total_{name}": Sum(name) for name in SERIES_SUMS},
            total_human_seconds=Sum("human_seconds"),
            total_human_seconds_completed=Sum("human_seconds_completed"),
            total_baseline_minutes=Sum(
                F("completed") * factor, output_field=DecimalField(max_digits=20, decimal_places=6)
            ),
        )
    }
    points = []
    for day in _days(flt):
        row = per_day.get(day)
        if row is None:
            points.append(DayPoint(day, 0, 0, 0, 0, 0, Decimal("0.00"), Decimal("0.00")))
            continue
        cost = (
            Decimal(row["cost_model"] or 0)
            + Decimal(row["cost_gpu"] or 0)
            + Decimal(str(row["human_seconds"] or 0)) / SECONDS_PER_HOUR * inputs.rate
        )
        saved = Decimal(row["baseline_minutes"] or 0) - Decimal(str(row["human_seconds_completed"] or 0)) / 60
        points.append(
            DayPoint(
                day=day,
                cases=row["cases"] or 0,
                completed=row["completed"] or 0,
                straight_through=(row["completed"] or 0) - (row["escalated_completed"] or 0),
                escalated=row["escalated_completed"] or 0,
                failed=row["failed_or_incident"] or 0,
                cost=cost.quantize(Decimal("0.01")),
                hours_saved=(saved / 60).quantize(Decimal("0.01")),
            )
        )
    return points


def overview_for_user(user: AnyUser, flt: DashboardFilter, *, now: datetime | None = None) -> Overview:
    """The overview (or, with flt.workflow_id set, one process's page): KPI tiles, cycle-time split, a daily
    series, the backlog now, and a row per process. Reads the rollups (a fixed number of queries whatever the
    range) plus the open runs and approvals for the backlog. Http404 for a workflow or version she may not read."""
    now = now or timezone.now()
    workflow_ids = _visible_workflow_ids(user, flt)
    rows = _workflow_rows(flt, workflow_ids)
    workflows = list(Workflow.objects.filter(pk__in=workflow_ids).order_by("name"))
    inputs = _inputs_for(workflow_ids, workflows)
    per_workflow: dict[int, dict[str, Any]] = {}
    totals = _zero_sums()
    for row in _workflow_sums(rows, ("workflow_id",)):
        _add(per_workflow.setdefault(row["workflow_id"], _zero_sums()), row)
        _add(totals, row)
    histograms_by_workflow = _merged_histograms(rows, CYCLE_HISTOGRAMS, group_by="workflow_id")
    cycle = _cycle_time(
        [histograms.merged(arrays[index] for arrays in histograms_by_workflow.values()) for index in range(4)]
    )
    figures = _figures(totals, per_workflow, inputs, cycle, flt)
    backlog, risk = _backlog(workflow_ids, flt, now)
    figures["backlog"] = Kpi(
        key="backlog",
        label="Open now",
        value=sum(bucket.open_cases for bucket in backlog),
        unit="count",
        how="Cases still running or waiting (a restarted case once, by its newest run), and approval items still "
        "open, right now, whatever the period.",
        inputs={"Open approval items": str(sum(bucket.open_approvals for bucket in backlog))},
    )
    figures["sla_at_risk"] = Kpi(
        key="sla_at_risk",
        label="Approvals at risk",
        value=risk["at_risk"],
        unit="count",
        how="Open approval items past 80 % of the time they were given (creation to due time), overdue ones "
        "included, right now.",
        inputs={"Open items with a due time": str(risk["with_due"]), "Already overdue": str(risk["overdue"])},
    )
    processes = []
    for workflow in workflows:
        sums = per_workflow.get(workflow.pk, _zero_sums())
        processes.append(
            ProcessRow(
                workflow_id=workflow.pk,
                slug=workflow.slug,
                name=workflow.name,
                version_id=None,
                version_number=None,
                kpis=_figures(
                    sums,
                    {workflow.pk: sums},
                    inputs,
                    _cycle_time(histograms_by_workflow.get(workflow.pk)),
                    flt,
                ),
            )
        )
    return Overview(
        filter=flt,
        has_data=totals["cases"] > 0,
        kpis=list(figures.values()),
        cycle_time=cycle,
        series=_series(flt, rows, inputs),
        backlog=backlog,
        processes=processes,
    )


def versions_for_user(user: AnyUser, flt: DashboardFilter) -> list[ProcessRow]:
    """One row per published version of flt.workflow_id (newest first) with its KPIs over the filter's period,
    for comparing versions on a process page. Http404 for a workflow she may not read; [] without a workflow."""
    if flt.workflow_id is None:
        return []
    workflow_ids = _visible_workflow_ids(
        user, DashboardFilter(start=flt.start, end=flt.end, workflow_id=flt.workflow_id)
    )
    workflow = Workflow.objects.get(pk=workflow_ids[0])
    inputs = _inputs_for(workflow_ids)
    rows = _workflow_rows(DashboardFilter(start=flt.start, end=flt.end), workflow_ids)
    sums_by_version = {row["version_id"]: row for row in _workflow_sums(rows, ("version_id",))}
    histograms_by_version = _merged_histograms(rows, CYCLE_HISTOGRAMS, group_by="version_id")
    versions = (
        WorkflowVersion.objects.filter(workflow=workflow)
        .filter(Q(state=WorkflowVersion.State.PUBLISHED) | Q(pk__in=list(sums_by_version)))
        .order_by("-number")
    )
    result = []
    for version in versions:
        sums = _zero_sums()
        if version.pk in sums_by_version:
            _add(sums, sums_by_version[version.pk])
        result.append(
            ProcessRow(
                workflow_id=workflow.pk,
                slug=workflow.slug,
                name=f"{workflow.name} v{version.number}",
                version_id=version.pk,
                version_number=version.number,
                kpis=_figures(
                    sums, {workflow.pk: sums}, inputs, _cycle_time(histograms_by_version.get(version.pk)), flt
                ),
            )
        )
    return result


def queue_view_for_user(user: AnyUser, flt: DashboardFilter, *, queue_id: int) -> QueueView:
    """A queue's figures over the filter's period (and team / workflow when set): items opened and decided, their
    time per item and wait percentiles, SLA breaches, load per reviewer. Http404 for a queue she may not read."""
    queue = dashboard_queues_for_user(user).filter(pk=queue_id).first()
    if queue is None:
        raise Http404("No such queue.")
    rows = QueueDayRollup.objects.filter(queue=queue, day__gte=flt.start, day__lte=flt.end)
    if flt.workflow_id is not None or flt.team_id is not None:
        rows = rows.filter(workflow_id__in=_visible_workflow_ids(user, flt))
    sums_names = (
        "opened",
        "decided",
        "approved",
        "rejected",
        "edited",
        "expired",
        "sla_due",
        "sla_breached",
        "human_seconds",
    )
    per_reviewer = list(rows.order_by().values("reviewer_id").annotate(**{name: Sum(name) for name in sums_names}))
    per_day = {
        row["day"]: row for row in rows.order_by().values("day").annotate(**{name: Sum(name) for name in sums_names})
    }
    arrays = _merged_histograms(rows, ("hist_time_per_item", "hist_wait"), group_by="reviewer_id")
    time_per_item = histograms.merged(pair[0] for pair in arrays.values())
    wait = histograms.merged(pair[1] for pair in arrays.values())
    totals = {name: sum(row[name] or 0 for row in per_reviewer) for name in sums_names}
    settings_row = kpi_settings_get()
    names = {
        user_row.pk: (user_row.get_full_name() or user_row.get_username())
        for user_row in User.objects.filter(pk__in=[row["reviewer_id"] for row in per_reviewer if row["reviewer_id"]])
    }
    reviewers = []
    for row in sorted(per_reviewer, key=lambda r: (r["reviewer_id"] is None, names.get(r["reviewer_id"], ""))):
        own = _percentiles((arrays.get(row["reviewer_id"]) or [[], []])[0])
        reviewers.append(
            {
                "reviewer_id": row["reviewer_id"],
                "name": names.get(row["reviewer_id"], "Not decided yet"),
                "opened": row["opened"] or 0,
                "decided": row["decided"] or 0,
                "overridden": (row["rejected"] or 0) + (row["edited"] or 0),
                "sla_breached": row["sla_breached"] or 0,
                "hours": round((row["human_seconds"] or 0) / 3600, 2),
                "time_per_item_p50": own.p50,
            }
        )
    series = []
    for day in _days(flt):
        row = per_day.get(day, {})
        series.append(
            {
                "day": day,
                "opened": row.get("opened") or 0,
                "decided": row.get("decided") or 0,
                "sla_breached": row.get("sla_breached") or 0,
            }
        )
    handling_cost = Decimal(str(totals["human_seconds"])) / SECONDS_PER_HOUR * settings_row.reviewer_hourly_rate
    kpis = [
        Kpi("opened", "Items opened", totals["opened"], "count", "Approval items that arrived in the period.", {}),
        Kpi(
            "decided",
            "Items decided",
            totals["decided"],
            "count",
            "Items that arrived in the period and are decided.",
            {},
        ),
        Kpi(
            "override_rate",
            "Override rate",
            _ratio(totals["rejected"] + totals["edited"], totals["decided"]),
            "percent",
            "Decided items whose reviewer rejected or edited the proposal ÷ decided items.",
            {"Rejected": str(totals["rejected"]), "Edited": str(totals["edited"]), "Decided": str(totals["decided"])},
        ),
        Kpi(
            "sla_breach_rate",
            "SLA breach rate",
            _ratio(totals["sla_breached"], totals["sla_due"]),
            "percent",
            "Items with a due time decided after it, or expired undecided ÷ items with a due time decided or expired.",
            {"Breached": str(totals["sla_breached"]), "With a due time": str(totals["sla_due"])},
        ),
        Kpi(
            "time_per_item_p50",
            "Time per item, median",
            _percentiles(time_per_item).p50,
            "seconds",
            "Reviewer handling time per decided item (the time each decision recorded, else claim to decision).",
            {},
        ),
        Kpi(
            "handling_cost",
            "Handling cost",
            handling_cost.quantize(Decimal("0.01")),
            "money",
            "Reviewers' handling hours × loaded hourly rate.",
            {
                "Handling hours": f"{totals['human_seconds'] / 3600:.2f}",
                "Loaded hourly rate": f"{settings_row.reviewer_hourly_rate} {settings_row.currency}",
            },
        ),
    ]
    return QueueView(
        queue_id=queue.pk,
        key=queue.key,
        name=queue.name,
        has_data=totals["opened"] > 0,
        kpis=kpis,
        time_per_item=_percentiles(time_per_item),
        wait=_percentiles(wait),
        series=series,
        reviewers=reviewers,
    )


def endpoint_view_for_user(user: AnyUser, flt: DashboardFilter, *, endpoint_id: int) -> EndpointView:
    """An endpoint's usage over the filter's period: calls, tokens, latency and time-to-first-token percentiles,
    errors by kind, cost, GPU-seconds. Counts the calls of workflows she may read (and of the team / workflow
    filter when set) plus calls outside any run (knowledge embeddings). Http404 for an endpoint she may not read."""
    endpoint = dashboard_endpoints_for_user(user).filter(pk=endpoint_id).first()
    if endpoint is None:
        raise Http404("No such endpoint.")
    rows = EndpointDayRollup.objects.filter(endpoint=endpoint, day__gte=flt.start, day__lte=flt.end)
    visible = _visible_workflow_ids(user, flt)
    if flt.workflow_id is not None or flt.team_id is not None:
        rows = rows.filter(workflow_id__in=visible)
    else:
        rows = rows.filter(Q(workflow_id__in=visible) | Q(workflow__isnull=True))
    names = ("calls", "errors", "prompt_tokens", "generated_tokens", "cost_tokens", "cost_gpu", "gpu_seconds")
    per_day = {row["day"]: row for row in rows.order_by().values("day").annotate(**{n: Sum(n) for n in names})}
    totals: dict[str, Any] = {
        n: sum((row[n] or 0 for row in per_day.values()), Decimal(0) if n.startswith("cost") else 0) for n in names
    }
    errors: dict[str, int] = {}
    for kinds in rows.values_list("errors_by_kind", flat=True):
        for kind, count in (kinds or {}).items():
            errors[kind] = errors.get(kind, 0) + int(count)
    arrays = _merged_histograms(rows, ("hist_latency", "hist_ttft")).get(None, [[], []])
    settings_row = kpi_settings_get()
    cost = Decimal(totals["cost_tokens"]) + Decimal(totals["cost_gpu"])
    currency = settings_row.currency
    kpis = [
        Kpi("calls", "Calls", totals["calls"], "count", "Model calls that began in the period.", {}),
        Kpi(
            "error_rate",
            "Error rate",
            _ratio(totals["errors"], totals["calls"]),
            "percent",
            "Calls that failed ÷ calls.",
            {"Errors": str(totals["errors"]), "Calls": str(totals["calls"])},
        ),
        Kpi(
            "tokens",
            "Tokens",
            totals["prompt_tokens"] + totals["generated_tokens"],
            "count",
            "Prompt and generated tokens of every call.",
            {"Prompt": str(totals["prompt_tokens"]), "Generated": str(totals["generated_tokens"])},
        ),
        Kpi(
            "cost",
            "Cost",
            cost.quantize(Decimal("0.01")),
            "money",
            "Tokens × the endpoint's price per 1k, or GPU-seconds × the hourly GPU price for a self-hosted endpoint "
            "(a call's GPU-seconds are its latency: an upper bound when the server batches calls together).",
            {
                "Token cost": f"{Decimal(totals['cost_tokens']).quantize(Decimal('0.01'))} {currency}",
                "GPU cost": f"{Decimal(totals['cost_gpu']).quantize(Decimal('0.01'))} {currency}",
            },
        ),
        Kpi(
            "gpu_seconds",
            "GPU-seconds",
            round(float(totals["gpu_seconds"]), 2),
            "seconds",
            "Time the self-hosted endpoint spent serving calls (sum of call latencies).",
            {},
        ),
        Kpi(
            "latency_p95",
            "Latency, 95th percentile",
            _percentiles(arrays[0]).p95,
            "seconds",
            "Whole-call time, from log-scale histograms (±9 %).",
            {},
        ),
        Kpi(
            "ttft_p95",
            "Time to first token, 95th percentile",
            _percentiles(arrays[1]).p95,
            "seconds",
            "Streaming calls only, from log-scale histograms (±9 %).",
            {},
        ),
    ]
    series = []
    for day in _days(flt):
        row = per_day.get(day, {})
        series.append(
            {
                "day": day,
                "calls": row.get("calls") or 0,
                "errors": row.get("errors") or 0,
                "prompt_tokens": row.get("prompt_tokens") or 0,
                "generated_tokens": row.get("generated_tokens") or 0,
                "cost": (Decimal(row.get("cost_tokens") or 0) + Decimal(row.get("cost_gpu") or 0)).quantize(
                    Decimal("0.01")
                ),
            }
        )
    return EndpointView(
        endpoint_id=endpoint.pk,
        name=endpoint.name,
        has_data=totals["calls"] > 0,
        kpis=kpis,
        latency=_percentiles(arrays[0]),
        ttft=_percentiles(arrays[1]),
        errors=dict(sorted(errors.items())),
        series=series,
    )
