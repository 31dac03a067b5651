"""Dashboard widgets: a registry of small classes, one per box on a dashboard page.

A widget has a slug (its URL), a title, a template, the pages it appears on (`scopes`), one method `data(page)`
that produces its template context from the page's data, and `rows(page)` that gives the same data as CSV rows
(a header row first). Every widget renders on its page's first response (so the page works without JavaScript),
refreshes as an htmx fragment at its own URL with the page's filter, and downloads as CSV at
`…/<slug>.csv?<filter>` through the same permission checks.

`PageData` loads what the widgets read, once per request and only when a widget asks for it, so a fragment
request computes just its own widget's figures. Adding a widget is a class here with `@register` and a line in
CONTRIBUTING.md's checklist (see "How to add a dashboard widget").
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from functools import cached_property
from typing import Any, ClassVar

from apps.dashboards import charts
from apps.dashboards.charts import format_value
from apps.dashboards.selectors import (
    DashboardFilter,
    EndpointView,
    Kpi,
    Overview,
    ProcessRow,
    QueueView,
    endpoint_view_for_user,
    kpi_settings_get,
    overview_for_user,
    queue_view_for_user,
    versions_for_user,
)

OVERVIEW, PROCESS, QUEUE, ENDPOINT = "overview", "process", "queue", "endpoint"


class PageData:
    """What one dashboard page (or one widget fragment) reads, loaded lazily and at most once: the overview, the
    versions of the process, the queue or endpoint view, and the small extras of page_data."""

    def __init__(self, user: Any, flt: DashboardFilter, *, queue: Any = None, endpoint: Any = None) -> None:
        self.user = user
        self.filter = flt
        self.queue = queue
        self.endpoint = endpoint

    @cached_property
    def overview(self) -> Overview:
        return overview_for_user(self.user, self.filter)

    @cached_property
    def versions(self) -> list[ProcessRow]:
        return versions_for_user(self.user, self.filter)

    @cached_property
    def queue_view(self) -> QueueView:
        return queue_view_for_user(self.user, self.filter, queue_id=self.queue.pk)

    @cached_property
    def endpoint_view(self) -> EndpointView:
        return endpoint_view_for_user(self.user, self.filter, endpoint_id=self.endpoint.pk)

    @cached_property
    def currency(self) -> str:
        return kpi_settings_get().currency

    @cached_property
    def cost_breakdown(self) -> Any:
        from apps.dashboards.page_data import cost_breakdown

        return cost_breakdown(self.user, self.filter)

    @cached_property
    def time_per_item(self) -> tuple[list[float], list[int]]:
        from apps.dashboards.page_data import queue_time_per_item

        return queue_time_per_item(self.user, self.filter, self.queue)

    def has_data(self, scope: str) -> bool:
        """Whether the period holds anything for this page (else the page shows its empty state)."""
        if scope == QUEUE:
            return self.queue_view.has_data
        if scope == ENDPOINT:
            return self.endpoint_view.has_data
        return self.overview.has_data


class Widget:
    """One box on a dashboard. Subclasses set the class attributes and implement `data` and `rows`."""

    slug: ClassVar[str]
    title: ClassVar[str]
    lead: ClassVar[str] = ""  # one sentence under the title: what the reader is looking at
    template: ClassVar[str] = "dashboards/_widget_chart.html"
    scopes: ClassVar[frozenset[str]] = frozenset({OVERVIEW, PROCESS})
    wide: ClassVar[bool] = False
    # Shown even when the period holds no case: figures about "now" rather than the period.
    always: ClassVar[bool] = False

    def data(self, page: PageData) -> dict[str, Any]:
        raise NotImplementedError

    def rows(self, page: PageData) -> list[list[Any]]:
        raise NotImplementedError


WIDGETS: dict[str, Widget] = {}


def register(cls: type[Widget]) -> type[Widget]:
    """Add a widget class to the registry (its slug must be new)."""
    if cls.slug in WIDGETS:
        raise ValueError(f"dashboard widget {cls.slug!r} is registered twice")
    WIDGETS[cls.slug] = cls()
    return cls


def widgets_for(scope: str) -> list[Widget]:
    """The widgets of a page, in the order they were registered (the page's reading order)."""
    return [widget for widget in WIDGETS.values() if scope in widget.scopes]


def widget_get(scope: str, slug: str) -> Widget | None:
    widget = WIDGETS.get(slug)
    return widget if widget is not None and scope in widget.scopes else None


# Helpers -----------------------------------------------------------------------------------------------------


def day_label(day: Any) -> str:
    return f"{day.day} {day:%b}"


def chart_id(widget: Widget, suffix: str = "") -> str:
    return f"chart-{widget.slug}{'-' + suffix if suffix else ''}"


def number(value: Any) -> Any:
    """A value as a CSV cell: numbers stay numbers (so a spreadsheet can sum them), None is empty."""
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return value.normalize() if value == value.to_integral() else value
    if isinstance(value, float):
        return round(value, 4)
    return value


@dataclass(frozen=True)
class Tile:
    """A KPI as a tile shows it: the figure formatted, the "how" disclosure, an optional sparkline."""

    kpi: Kpi
    text: str
    negative: bool
    sparkline: charts.Chart | None
    inputs_editable: bool


def tiles(kpis: list[Kpi], currency: str, sparklines: dict[str, charts.Chart] | None = None) -> list[Tile]:
    sparklines = sparklines or {}
    # The figures that depend on inputs a manager sets (rates, baselines, realisation, build cost, GPU price).
    editable = {
        "hours_saved",
        "time_saved_per_case",
        "value",
        "roi",
        "payback",
        "run_cost",
        "cost_per_case",
        "handling_cost",
        "cost",
    }
    return [
        Tile(
            kpi=kpi,
            text=format_value(kpi.value, kpi.unit, currency=currency),
            negative=kpi.value is not None and float(kpi.value) < 0,
            sparkline=sparklines.get(kpi.key),
            inputs_editable=kpi.key in editable,
        )
        for kpi in kpis
    ]


def kpi_rows(kpis: list[Kpi], currency: str) -> list[list[Any]]:
    rows: list[list[Any]] = [["Figure", "Value", "Unit", "Shown as", "How this is computed", "Inputs"]]
    for kpi in kpis:
        unit = currency if kpi.unit == "money" else kpi.unit
        inputs = "; ".join(f"{label}: {value}" for label, value in kpi.inputs.items())
        shown = format_value(kpi.value, kpi.unit, currency=currency)
        rows.append([kpi.label, number(kpi.value), unit, shown, kpi.how, inputs])
    return rows


def _rate(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 1) if whole else None


# Overview and process pages ------------------------------------------------------------------------------------

# The order of the tiles on the overview: the questions a manager asks first come first.
TILE_ORDER = [
    "cases",
    "throughput",
    "straight_through_rate",
    "escalation_rate",
    "override_rate",
    "audit_agreement",
    "cycle_time_p50",
    "cycle_time_p95",
    "cycle_time_p99",
    "sla_breach_rate",
    "sla_at_risk",
    "failure_rate",
    "backlog",
    "cost_per_case",
    "run_cost",
    "hours_saved",
    "time_saved_per_case",
    "value",
    "roi",
    "payback",
]


def _ordered(kpis: list[Kpi]) -> list[Kpi]:
    rank = {key: index for index, key in enumerate(TILE_ORDER)}
    return sorted(kpis, key=lambda kpi: rank.get(kpi.key, len(rank)))


SPARKLINE_TITLES = {
    "cases": "Cases per day",
    "throughput": "Completed cases per day",
    "run_cost": "Run cost per day",
    "hours_saved": "Hours saved per day",
}


@register
class KpiTiles(Widget):
    slug = "kpis"
    title = "Key figures"
    lead = "Each figure opens to say how it is computed and from which inputs."
    template = "dashboards/_widget_kpis.html"
    wide = True

    def data(self, page: PageData) -> dict[str, Any]:
        overview = page.overview
        labels = [day_label(point.day) for point in overview.series]
        series: dict[str, list[Any]] = {
            "cases": [point.cases for point in overview.series],
            "throughput": [point.completed for point in overview.series],
            "run_cost": [point.cost for point in overview.series],
            "hours_saved": [point.hours_saved for point in overview.series],
        }
        sparklines = {
            key: charts.sparkline(
                chart_id=chart_id(self, key),
                title=SPARKLINE_TITLES[key],
                labels=labels,
                values=values,
                unit="money" if key == "run_cost" else "hours" if key == "hours_saved" else "count",
            )
            for key, values in series.items()
            if len(values) > 1
        }
        return {"tiles": tiles(_ordered(overview.kpis), page.currency, sparklines)}

    def rows(self, page: PageData) -> list[list[Any]]:
        return kpi_rows(_ordered(page.overview.kpis), page.currency)


@register
class CasesOverTime(Widget):
    slug = "cases-over-time"
    title = "Cases over time"
    lead = "Cases that started each day, how many of them completed, and how many failed."

    def data(self, page: PageData) -> dict[str, Any]:
        points = page.overview.series
        chart = charts.line_chart(
            chart_id=chart_id(self),
            title="Cases per day",
            labels=[day_label(point.day) for point in points],
            series=[
                ("Started", [point.cases for point in points]),
                ("Completed", [point.completed for point in points]),
                ("Failed", [point.failed for point in points]),
            ],
            category="Day",
        )
        return {"chart": chart}

    def rows(self, page: PageData) -> list[list[Any]]:
        rows: list[list[Any]] = [["Day", "Cases", "Completed", "Failed"]]
        rows += [[p.day.isoformat(), p.cases, p.completed, p.failed] for p in page.overview.series]
        return rows


@register
class AutomationOverTime(Widget):
    slug = "automation-over-time"
    title = "Straight-through and escalation"
    lead = "Of each day's completed cases: the share no person touched, and the share that went to a reviewer."

    def data(self, page: PageData) -> dict[str, Any]:
        points = page.overview.series
        chart = charts.line_chart(
            chart_id=chart_id(self),
            title="Straight-through and escalation rate per day",
            labels=[day_label(point.day) for point in points],
            series=[
                ("Straight-through", [_rate(point.straight_through, point.completed) for point in points]),
                ("Escalated", [_rate(point.escalated, point.completed) for point in points]),
            ],
            unit="percent",
            category="Day",
        )
        return {"chart": chart}

    def rows(self, page: PageData) -> list[list[Any]]:
        rows: list[list[Any]] = [
            ["Day", "Completed", "Straight-through", "Escalated", "Straight-through %", "Escalated %"]
        ]
        for point in page.overview.series:
            rows.append(
                [
                    point.day.isoformat(),
                    point.completed,
                    point.straight_through,
                    point.escalated,
                    number(_rate(point.straight_through, point.completed)),
                    number(_rate(point.escalated, point.completed)),
                ]
            )
        return rows


CYCLE_PARTS = [("Machine", "machine"), ("Queue wait", "queue"), ("Human", "human")]
PERCENTILES = [("Median", "p50"), ("95th percentile", "p95"), ("99th percentile", "p99")]


@register
class CycleTimeSplit(Widget):
    slug = "cycle-time"
    title = "Cycle time, split"
    lead = "How long completed cases took, split into steps running, waiting in a queue, and people working."

    def data(self, page: PageData) -> dict[str, Any]:
        cycle = page.overview.cycle_time
        if cycle.total.count == 0:
            chart = charts.stacked_bar_chart(
                chart_id=chart_id(self), title="Cycle time percentiles", labels=[], series=[], unit="seconds"
            )
            return {"chart": chart}
        totals = ", ".join(
            f"{name.lower()} {format_value(getattr(cycle.total, attribute), 'seconds')}"
            for name, attribute in PERCENTILES
        )
        chart = charts.stacked_bar_chart(
            chart_id=chart_id(self),
            title="Cycle time percentiles by part",
            labels=[name for name, _ in PERCENTILES],
            series=[
                (label, [getattr(getattr(cycle, part), attribute) for _, attribute in PERCENTILES])
                for label, part in CYCLE_PARTS
            ],
            unit="seconds",
            note=f"Each part is its own percentile over the cases, so the parts need not add up to the whole case's: "
            f"{totals} ({cycle.total.count} completed cases).",
            category="Percentile",
        )
        return {"chart": chart}

    def rows(self, page: PageData) -> list[list[Any]]:
        cycle = page.overview.cycle_time
        rows: list[list[Any]] = [["Part", "Cases measured", "Median (s)", "95th percentile (s)", "99th percentile (s)"]]
        for label, part in [("Whole case", "total"), *CYCLE_PARTS]:
            values = getattr(cycle, part)
            rows.append([label, values.count, number(values.p50), number(values.p95), number(values.p99)])
        return rows


@register
class Backlog(Widget):
    slug = "backlog"
    title = "Backlog by age, now"
    lead = "Cases still open and approval items still waiting, by how long ago they arrived (whatever the period)."
    always = True

    def data(self, page: PageData) -> dict[str, Any]:
        buckets = page.overview.backlog
        if not any(bucket.open_cases or bucket.open_approvals for bucket in buckets):
            chart = charts.stacked_bar_chart(chart_id=chart_id(self), title="Open now by age", labels=[], series=[])
            return {"chart": chart, "empty_text": "Nothing is open right now."}
        chart = charts.stacked_bar_chart(
            chart_id=chart_id(self),
            title="Open now by age",
            labels=[bucket.label for bucket in buckets],
            series=[
                ("Open cases", [bucket.open_cases for bucket in buckets]),
                ("Open approval items", [bucket.open_approvals for bucket in buckets]),
            ],
            category="Age",
        )
        return {"chart": chart}

    def rows(self, page: PageData) -> list[list[Any]]:
        rows: list[list[Any]] = [["Age", "Open cases", "Open approval items"]]
        rows += [[bucket.label, bucket.open_cases, bucket.open_approvals] for bucket in page.overview.backlog]
        return rows


@register
class CostPerCase(Widget):
    slug = "cost-per-case"
    title = "Cost per case"
    lead = "What a case costs on average, by part: model tokens, GPU time of our own servers, reviewers' time."

    def data(self, page: PageData) -> dict[str, Any]:
        costs = page.cost_breakdown
        parts = self._parts(costs)
        chart = charts.horizontal_bar_chart(
            chart_id=chart_id(self),
            title=f"Cost per case by part ({costs.currency})",
            labels=[label for label, _, _ in parts],
            values=[costs.per_case(total) for _, total, _ in parts] if costs.cases else [],
            unit="money",
            series_name=f"Per case ({costs.currency})",
            category="Part",
        )
        return {
            "chart": chart,
            "facts": [
                ("Cases", str(costs.cases)),
                ("Cost per case", format_value(costs.per_case(costs.total), "money", currency=costs.currency)),
                ("Run cost", format_value(costs.total, "money", currency=costs.currency)),
                ("Reviewer hours", format_value(costs.reviewer_hours, "hours")),
            ],
        }

    @staticmethod
    def _parts(costs: Any) -> list[tuple[str, Decimal, str]]:
        return [
            ("Model tokens", costs.model, "Tokens × the endpoint's price per 1k"),
            ("GPU time", costs.gpu, "GPU-seconds × the hourly GPU price (self-hosted endpoints)"),
            ("Reviewers' time", costs.reviewer, f"{costs.reviewer_hours} h × {costs.rate} {costs.currency} per hour"),
        ]

    def rows(self, page: PageData) -> list[list[Any]]:
        costs = page.cost_breakdown
        rows: list[list[Any]] = [["Part", f"Total ({costs.currency})", f"Per case ({costs.currency})", "How"]]
        for label, total, how in self._parts(costs):
            rows.append([label, number(total), number(costs.per_case(total)), how])
        rows.append(["All parts", number(costs.total), number(costs.per_case(costs.total)), f"{costs.cases} cases"])
        return rows


@register
class HoursSavedAndRoi(Widget):
    slug = "hours-saved"
    title = "Hours saved and return"
    lead = "Hours of manual work saved each day (baseline × realisation − the human time still spent)."

    def data(self, page: PageData) -> dict[str, Any]:
        overview = page.overview
        chart = charts.bar_chart(
            chart_id=chart_id(self),
            title="Hours saved per day",
            labels=[day_label(point.day) for point in overview.series],
            values=[point.hours_saved for point in overview.series],
            unit="hours",
            over_time=True,
            category="Day",
        )
        kpis = {kpi.key: kpi for kpi in overview.kpis}
        facts = [
            (
                kpis[key].label,
                "no data"
                if kpis[key].value is None
                else format_value(kpis[key].value, kpis[key].unit, currency=page.currency),
            )
            for key in ("hours_saved", "value", "run_cost", "roi", "payback")
            if key in kpis
        ]
        return {"chart": chart, "facts": facts}

    def rows(self, page: PageData) -> list[list[Any]]:
        rows: list[list[Any]] = [["Day", "Hours saved", f"Run cost ({page.currency})"]]
        rows += [[p.day.isoformat(), number(p.hours_saved), number(p.cost)] for p in page.overview.series]
        return rows


# The comparison tables' columns: (KPI key, column heading).
COMPARISON_COLUMNS = [
    ("cases", "Cases"),
    ("throughput", "Completed"),
    ("straight_through_rate", "Straight-through"),
    ("escalation_rate", "Escalation"),
    ("override_rate", "Override"),
    ("cycle_time_p50", "Cycle time (median)"),
    ("cycle_time_p95", "Cycle time (p95)"),
    ("failure_rate", "Failures"),
    ("cost_per_case", "Cost per case"),
    ("hours_saved", "Hours saved"),
    ("roi", "ROI"),
]


def comparison(rows: list[ProcessRow], currency: str) -> dict[str, Any]:
    return {
        "columns": [heading for _, heading in COMPARISON_COLUMNS],
        "rows": [
            {
                "row": row,
                "cells": [
                    format_value(row.kpis[key].value, row.kpis[key].unit, currency=currency) if key in row.kpis else "–"
                    for key, _ in COMPARISON_COLUMNS
                ],
            }
            for row in rows
        ],
    }


def comparison_rows(rows: list[ProcessRow], currency: str, *, first: str) -> list[list[Any]]:
    header: list[Any] = [first]
    for key, heading in COMPARISON_COLUMNS:
        unit = rows[0].kpis[key].unit if rows and key in rows[0].kpis else ""
        header.append(f"{heading} ({currency if unit == 'money' else unit})" if unit else heading)
    result = [header]
    for row in rows:
        result.append(
            [row.name, *[number(row.kpis[key].value) if key in row.kpis else "" for key, _ in COMPARISON_COLUMNS]]
        )
    return result


@register
class ProcessTable(Widget):
    slug = "processes"
    title = "Processes compared"
    lead = "Every process in the filter over the period. Open one for its own page and its versions."
    template = "dashboards/_widget_processes.html"
    scopes = frozenset({OVERVIEW})
    wide = True

    def data(self, page: PageData) -> dict[str, Any]:
        return comparison(page.overview.processes, page.currency)

    def rows(self, page: PageData) -> list[list[Any]]:
        return comparison_rows(page.overview.processes, page.currency, first="Process")


@register
class VersionComparison(Widget):
    slug = "versions"
    title = "Versions compared"
    lead = "Each published version of this process over the period: what changed in a new version shows here."
    template = "dashboards/_widget_versions.html"
    scopes = frozenset({PROCESS})
    wide = True

    def data(self, page: PageData) -> dict[str, Any]:
        versions = page.versions
        context = comparison(versions, page.currency)
        context["chart"] = charts.horizontal_bar_chart(
            chart_id=chart_id(self),
            title="Straight-through rate by version",
            labels=[f"Version {row.version_number}" for row in versions],
            values=[row.kpis["straight_through_rate"].value for row in versions],
            unit="percent",
            category="Version",
        )
        return context

    def rows(self, page: PageData) -> list[list[Any]]:
        return comparison_rows(page.versions, page.currency, first="Version")


# Queue pages -----------------------------------------------------------------------------------------------------


@register
class QueueTiles(Widget):
    slug = "queue-kpis"
    title = "Key figures"
    template = "dashboards/_widget_kpis.html"
    scopes = frozenset({QUEUE})
    wide = True

    def data(self, page: PageData) -> dict[str, Any]:
        view = page.queue_view
        extra = [
            Kpi(
                "wait_p50",
                "Wait for a reviewer, median",
                view.wait.p50,
                "seconds",
                "From an item's arrival to a reviewer claiming it, from log-scale histograms (±9 %).",
                {},
            ),
            Kpi(
                "time_per_item_p95",
                "Time per item, 95th percentile",
                view.time_per_item.p95,
                "seconds",
                "Reviewer handling time per decided item; 1 item in 20 takes longer.",
                {},
            ),
        ]
        return {"tiles": tiles([*view.kpis, *extra], page.currency)}

    def rows(self, page: PageData) -> list[list[Any]]:
        return kpi_rows(page.queue_view.kpis, page.currency)


@register
class QueueOverTime(Widget):
    slug = "queue-over-time"
    title = "Items over time"
    lead = "Approval items that arrived each day, how many of them are decided, and how many breached their SLA."
    scopes = frozenset({QUEUE})

    def data(self, page: PageData) -> dict[str, Any]:
        series = page.queue_view.series
        chart = charts.line_chart(
            chart_id=chart_id(self),
            title="Items per day",
            labels=[day_label(row["day"]) for row in series],
            series=[
                ("Arrived", [row["opened"] for row in series]),
                ("Decided", [row["decided"] for row in series]),
                ("Breached SLA", [row["sla_breached"] for row in series]),
            ],
            category="Day",
        )
        return {"chart": chart}

    def rows(self, page: PageData) -> list[list[Any]]:
        rows: list[list[Any]] = [["Day", "Arrived", "Decided", "Breached SLA"]]
        rows += [[r["day"].isoformat(), r["opened"], r["decided"], r["sla_breached"]] for r in page.queue_view.series]
        return rows


@register
class TimePerItem(Widget):
    slug = "time-per-item"
    title = "Time per item"
    lead = "How long reviewers spent on each decided item; each bar covers twice the time of the one before it."
    scopes = frozenset({QUEUE})

    def data(self, page: PageData) -> dict[str, Any]:
        edges, counts = page.time_per_item
        view = page.queue_view
        chart = charts.histogram(
            chart_id=chart_id(self), title="Items by time spent", edges=edges or [1.0], counts=counts
        )
        facts = [
            (name, format_value(getattr(view.time_per_item, attribute), "seconds")) for name, attribute in PERCENTILES
        ]
        return {"chart": chart, "facts": facts}

    def rows(self, page: PageData) -> list[list[Any]]:
        edges, counts = page.time_per_item
        rows: list[list[Any]] = [["From (s)", "To (s)", "Items"]]
        rows += [[number(edges[i]), number(edges[i + 1]), count] for i, count in enumerate(counts)]
        return rows


@register
class ReviewerLoad(Widget):
    slug = "reviewers"
    title = "Load per reviewer"
    lead = "Items each reviewer decided over the period, with their overrides, breaches and time per item."
    template = "dashboards/_widget_reviewers.html"
    scopes = frozenset({QUEUE})
    wide = True

    def data(self, page: PageData) -> dict[str, Any]:
        reviewers = page.queue_view.reviewers
        decided = [row for row in reviewers if row["reviewer_id"] is not None]
        chart = charts.horizontal_bar_chart(
            chart_id=chart_id(self),
            title="Items decided per reviewer",
            labels=[row["name"] for row in decided],
            values=[row["decided"] for row in decided],
            category="Reviewer",
        )
        return {
            "chart": chart,
            "reviewers": [{**row, "time_text": format_value(row["time_per_item_p50"], "seconds")} for row in reviewers],
        }

    def rows(self, page: PageData) -> list[list[Any]]:
        rows: list[list[Any]] = [
            ["Reviewer", "Items", "Decided", "Overridden", "Breached SLA", "Hours", "Time per item, median (s)"]
        ]
        for row in page.queue_view.reviewers:
            rows.append(
                [
                    row["name"],
                    row["opened"],
                    row["decided"],
                    row["overridden"],
                    row["sla_breached"],
                    number(row["hours"]),
                    number(row["time_per_item_p50"]),
                ]
            )
        return rows


# Endpoint pages --------------------------------------------------------------------------------------------------


@register
class EndpointTiles(Widget):
    slug = "endpoint-kpis"
    title = "Key figures"
    template = "dashboards/_widget_kpis.html"
    scopes = frozenset({ENDPOINT})
    wide = True

    def data(self, page: PageData) -> dict[str, Any]:
        return {"tiles": tiles(page.endpoint_view.kpis, page.currency)}

    def rows(self, page: PageData) -> list[list[Any]]:
        return kpi_rows(page.endpoint_view.kpis, page.currency)


@register
class EndpointCalls(Widget):
    slug = "endpoint-calls"
    title = "Calls and errors"
    lead = "Calls that began each day, and how many of them failed."
    scopes = frozenset({ENDPOINT})

    def data(self, page: PageData) -> dict[str, Any]:
        series = page.endpoint_view.series
        chart = charts.line_chart(
            chart_id=chart_id(self),
            title="Calls per day",
            labels=[day_label(row["day"]) for row in series],
            series=[("Calls", [row["calls"] for row in series]), ("Errors", [row["errors"] for row in series])],
            category="Day",
        )
        return {"chart": chart}

    def rows(self, page: PageData) -> list[list[Any]]:
        rows: list[list[Any]] = [["Day", "Calls", "Errors"]]
        rows += [[row["day"].isoformat(), row["calls"], row["errors"]] for row in page.endpoint_view.series]
        return rows


@register
class EndpointTokens(Widget):
    slug = "endpoint-tokens"
    title = "Tokens"
    lead = "Prompt and generated tokens per day."
    scopes = frozenset({ENDPOINT})

    def data(self, page: PageData) -> dict[str, Any]:
        series = page.endpoint_view.series
        chart = charts.stacked_bar_chart(
            chart_id=chart_id(self),
            title="Tokens per day",
            labels=[day_label(row["day"]) for row in series],
            series=[
                ("Prompt", [row["prompt_tokens"] for row in series]),
                ("Generated", [row["generated_tokens"] for row in series]),
            ],
            over_time=True,
            category="Day",
        )
        return {"chart": chart}

    def rows(self, page: PageData) -> list[list[Any]]:
        rows: list[list[Any]] = [["Day", "Prompt tokens", "Generated tokens"]]
        rows += [[r["day"].isoformat(), r["prompt_tokens"], r["generated_tokens"]] for r in page.endpoint_view.series]
        return rows


@register
class EndpointLatency(Widget):
    slug = "endpoint-latency"
    title = "Latency"
    lead = "Whole-call time and time to first token (streaming calls): median (p50), 95th and 99th percentile."
    scopes = frozenset({ENDPOINT})

    def _values(self, page: PageData) -> list[tuple[str, float | None]]:
        view = page.endpoint_view
        return [
            (f"{label} {attribute}", getattr(getattr(view, part), attribute))
            for label, part in (("Latency", "latency"), ("First token", "ttft"))
            for _, attribute in PERCENTILES
        ]

    def data(self, page: PageData) -> dict[str, Any]:
        values = self._values(page)
        chart = charts.horizontal_bar_chart(
            chart_id=chart_id(self),
            title="Latency percentiles",
            labels=[label for label, _ in values],
            values=[value for _, value in values],
            unit="seconds",
            category="Measure",
        )
        return {"chart": chart}

    def rows(self, page: PageData) -> list[list[Any]]:
        return [["Measure", "Seconds"], *[[label, number(value)] for label, value in self._values(page)]]


@register
class EndpointErrors(Widget):
    slug = "endpoint-errors"
    title = "Errors by kind"
    lead = "Failed calls over the period, by what went wrong."
    scopes = frozenset({ENDPOINT})

    def data(self, page: PageData) -> dict[str, Any]:
        errors = page.endpoint_view.errors
        chart = charts.horizontal_bar_chart(
            chart_id=chart_id(self),
            title="Failed calls by kind",
            labels=[kind.replace("_", " ") for kind in errors],
            values=list(errors.values()),
            category="Kind",
        )
        return {"chart": chart, "empty_text": "No call failed in this period."}

    def rows(self, page: PageData) -> list[list[Any]]:
        return [["Kind", "Calls"], *[[kind, count] for kind, count in page.endpoint_view.errors.items()]]


@register
class EndpointCost(Widget):
    slug = "endpoint-cost"
    title = "Cost"
    lead = "What the endpoint's calls cost each day (tokens × price, or GPU time for our own servers)."
    scopes = frozenset({ENDPOINT})

    def data(self, page: PageData) -> dict[str, Any]:
        series = page.endpoint_view.series
        chart = charts.bar_chart(
            chart_id=chart_id(self),
            title=f"Cost per day ({page.currency})",
            labels=[day_label(row["day"]) for row in series],
            values=[row["cost"] for row in series],
            unit="money",
            over_time=True,
            category="Day",
        )
        return {"chart": chart}

    def rows(self, page: PageData) -> list[list[Any]]:
        rows: list[list[Any]] = [["Day", f"Cost ({page.currency})"]]
        rows += [[row["day"].isoformat(), number(row["cost"])] for row in page.endpoint_view.series]
        return rows
