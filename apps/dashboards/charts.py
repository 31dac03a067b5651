"""Our small chart module: scales, "nice" ticks, number and duration formatting, and the geometry of bar,
stacked bar, line, sparkline and histogram charts, as plain data that templates/dashboards/_chart_<kind>.html
draw as accessible SVG.

Pure Python with no Django import: a chart is computed from numbers and labels only, so it is tested without a
database and the same geometry serves the page, the htmx fragment and the printed page. No JavaScript and no
inline style are involved: positions are SVG attributes, colours and patterns come from CSS classes
(static/css/dashboards.css), which is what our strict Content-Security-Policy allows.

Every chart carries a one-sentence description of its data (range, highest, lowest, trend) for the SVG's
`<desc>`, a `<title>` per mark, and the data as a table (`Chart.table`) that the page shows in a disclosure, so
nothing is told by shape or colour alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

Number = int | float | Decimal
Unit = str  # "count", "percent" (0..100), "seconds", "hours", "money", "ratio", "months", "tokens"

# Series are told apart by a pattern (bars) or a dash and marker shape (lines) as well as by colour; the CSS has
# this many of each, and a chart with more series reuses them in turn.
SERIES_STYLES = 6
# Beyond this many categories the x axis labels only every k-th one (all of them stay in the data table).
MAX_X_LABELS = 8


# Numbers --------------------------------------------------------------------------------------------------------


def nice_number(value: float, *, round_to_nearest: bool) -> float:
    """The "nice" number (1, 2 or 5 times a power of ten) near `value` > 0: the nearest one when
    `round_to_nearest`, otherwise the smallest one at least `value` (the classic graphics-gems rule)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    exponent = math.floor(math.log10(value))
    fraction = value / 10**exponent
    if round_to_nearest:
        nice = 1.0 if fraction < 1.5 else 2.0 if fraction < 3 else 5.0 if fraction < 7 else 10.0
    else:
        nice = 1.0 if fraction <= 1 else 2.0 if fraction <= 2 else 5.0 if fraction <= 5 else 10.0
    return nice * 10**exponent


def nice_ticks(low: float, high: float, *, count: int = 5, integer: bool = False) -> list[float]:
    """Evenly spaced round tick values covering [low, high], about `count` of them, first <= low and last >= high.

    A degenerate range is widened so the axis still reads sensibly: all zeros gives 0..1, one value v gives 0..v
    (or v..0 when negative). With `integer` (counts) the step is never below 1, so a count axis never shows 0.5.
    """
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("ticks need finite bounds")
    if low > high:
        low, high = high, low
    if low == high:
        if low == 0:
            high = 1.0
        elif low > 0:
            low = 0.0
        else:
            high = 0.0
    span = nice_number(high - low, round_to_nearest=False)
    step = nice_number(span / max(count - 1, 1), round_to_nearest=True)
    if integer:
        step = max(step, 1.0)
    start = math.floor(low / step) * step
    stop = math.ceil(high / step) * step
    steps = round((stop - start) / step)
    # Round away the float noise of repeated multiplication (0.30000000000000004), to the step's own precision.
    digits = max(0, -math.floor(math.log10(step))) + 1
    return [round(start + index * step, digits) for index in range(steps + 1)]


# Steps a duration axis reads well in: round milliseconds and seconds, then 1, 2, 5, 10, 15 and 30 minutes, then
# 1, 2, 3, 6 and 12 hours, then days and weeks (beyond that, nice multiples of a week).
DURATION_STEPS = [
    *(value / 1000 for value in (1, 2, 5, 10, 20, 50, 100, 200, 500)),
    1, 2, 5, 10, 15, 30,
    60, 120, 300, 600, 900, 1800,
    3600, 7200, 10800, 21600, 43200,
    86400, 172800, 604800,
]  # fmt: skip


def duration_ticks(low: float, high: float, *, count: int = 5) -> list[float]:
    """Like nice_ticks, for seconds: the step is a round duration (15 min, 6 h, 2 days), never 16.7 min."""
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("ticks need finite bounds")
    if low > high:
        low, high = high, low
    if low == high:
        low, high = (0.0, high or 1.0) if high >= 0 else (low, 0.0)
    wanted = (high - low) / max(count - 1, 1)
    step = next((candidate for candidate in DURATION_STEPS if candidate >= wanted), None)
    if step is None:
        step = nice_number(wanted / 604800, round_to_nearest=False) * 604800
    start = math.floor(low / step) * step
    stop = math.ceil(high / step) * step
    steps = round((stop - start) / step)
    return [round(start + index * step, 6) for index in range(steps + 1)]


@dataclass(frozen=True)
class LinearScale:
    """Maps the domain [d0, d1] onto the range [r0, r1] (pixels; r0 > r1 for a y axis that grows upwards)."""

    d0: float
    d1: float
    r0: float
    r1: float

    def __call__(self, value: float) -> float:
        if self.d1 == self.d0:
            return (self.r0 + self.r1) / 2
        return self.r0 + (value - self.d0) * (self.r1 - self.r0) / (self.d1 - self.d0)


def _plain(value: float, digits: int) -> str:
    text = f"{value:,.{digits}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def format_compact(value: Number) -> str:
    """A short number for an axis or a tile: 950, 1.2k, 3.4M, 5.6B (a minus sign kept)."""
    number = float(value)
    magnitude = abs(number)
    for threshold, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if magnitude >= threshold:
            return _plain(number / threshold, 1) + suffix
    if 0 < magnitude < 0.01:
        # Two significant digits for the very small (a cost per case of a tenth of a cent is not "0").
        return _plain(number, 1 - math.floor(math.log10(magnitude)))
    return _plain(number, 0 if magnitude >= 100 else 1 if magnitude >= 10 else 2)


def format_duration(seconds: Number | None) -> str:
    """A duration as people say it: 850 ms, 4.2 s, 12 min, 2.5 h, 3.1 days."""
    if seconds is None:
        return "–"
    value = float(seconds)
    sign = "-" if value < 0 else ""
    value = abs(value)
    if value == 0:
        return "0 s"
    if value < 1:
        return f"{sign}{_plain(value * 1000, 0)} ms"
    if value < 60:
        return f"{sign}{_plain(value, 1)} s"
    if value < 3600:
        return f"{sign}{_plain(value / 60, 1)} min"
    if value < 86400:
        return f"{sign}{_plain(value / 3600, 1)} h"
    days = value / 86400
    return f"{sign}{_plain(days, 1)} day{'' if days == 1 else 's'}"


def format_value(value: Number | None, unit: Unit, *, compact: bool = False, currency: str = "") -> str:
    """`value` in `unit` as the page shows it; "–" when there is no value. `compact` for axes and small tiles."""
    if value is None:
        return "–"
    number = float(value)
    if not math.isfinite(number):
        return "–"
    if unit == "percent":
        return f"{_plain(number, 1)} %"
    if unit == "seconds":
        return format_duration(number)
    if unit == "hours":
        return f"{format_compact(number) if compact else _plain(number, 1)} h"
    if unit == "money":
        if compact:
            text = format_compact(number)
        elif 0 < abs(number) < 0.01:
            text = f"{number:,.4f}"  # a fraction of a cent: 0.0012, not a misleading 0.00
        else:
            text = f"{number:,.2f}"
        return f"{currency} {text}".strip()
    if unit == "ratio":
        # Shown as a percentage; past 1,000 % a decimal says nothing a reader can use.
        percent = number * 100
        return f"{_plain(percent, 0 if compact or abs(percent) >= 1000 else 1)} %"
    if unit == "months":
        return f"{_plain(number, 1)} month{'' if number == 1 else 's'}"
    if compact or abs(number) >= 1e6:
        return format_compact(number)
    return _plain(number, 0 if number == int(number) else 2)


# Geometry -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tick:
    value: float
    position: float
    label: str
    minor: bool = False  # a label a narrow screen hides (every other one), so the rest do not overlap


@dataclass(frozen=True)
class Bar:
    """One rectangle: a bar, a stacked segment or a histogram bucket. `series` picks its CSS class."""

    x: float
    y: float
    width: float
    height: float
    series: int
    title: str
    label: str = ""  # the value written beside the bar, when the chart has room for it
    label_x: float = 0
    label_y: float = 0


@dataclass(frozen=True)
class Dot:
    x: float
    y: float
    title: str


@dataclass(frozen=True)
class Line:
    """One series of a line chart: its polyline segments (a missing value breaks the line) and its points."""

    series: int
    name: str
    segments: list[str]
    dots: list[Dot]


@dataclass(frozen=True)
class LegendItem:
    series: int
    name: str


@dataclass(frozen=True)
class Table:
    """The chart's data as a table: the first column names the category, one column per series."""

    headers: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Chart:
    """What a chart template draws. Coordinates are in the SVG's viewBox (0 0 width height)."""

    kind: Literal["bar", "hbar", "stacked", "line", "sparkline", "histogram"]
    chart_id: str
    title: str
    description: str
    width: int
    height: int
    unit: Unit
    empty: bool
    left: float = 0
    top: float = 0
    right: float = 0
    bottom: float = 0
    baseline: float = 0
    x_ticks: list[Tick] = field(default_factory=list)
    y_ticks: list[Tick] = field(default_factory=list)
    bars: list[Bar] = field(default_factory=list)
    lines: list[Line] = field(default_factory=list)
    legend: list[LegendItem] = field(default_factory=list)
    table: Table = field(default_factory=lambda: Table([], []))
    note: str = ""

    @property
    def title_id(self) -> str:
        return f"{self.chart_id}-title"

    @property
    def desc_id(self) -> str:
        return f"{self.chart_id}-desc"

    @property
    def y_label_x(self) -> float:
        return self.left - 6

    @property
    def x_label_y(self) -> float:
        return self.bottom + 18

    @property
    def line_series(self) -> list[int]:
        """The series indexes whose marker shapes this chart's `<defs>` must declare."""
        return sorted({line.series for line in self.lines} | {item.series for item in self.legend})

    @property
    def pattern_series(self) -> list[int]:
        """The series indexes whose patterns this chart's `<defs>` must declare."""
        return sorted({bar.series % SERIES_STYLES for bar in self.bars} | {item.series for item in self.legend})


@dataclass(frozen=True)
class Frame:
    width: int = 560
    height: int = 250
    left: float = 78
    right: float = 18
    top: float = 16
    bottom: float = 36


def _floats(values: Sequence[Number | None]) -> list[float | None]:
    result: list[float | None] = []
    for value in values:
        if value is None:
            result.append(None)
            continue
        number = float(value)
        result.append(number if math.isfinite(number) else None)
    return result


def _label_every(count: int) -> int:
    return max(1, math.ceil(count / MAX_X_LABELS))


def _value_ticks(values: list[float], frame: Frame, unit: Unit, *, integer: bool) -> tuple[LinearScale, list[Tick]]:
    low = min([0.0, *values])
    high = max([0.0, *values])
    if unit == "percent" and low >= 0 and high <= 100 and high > 0:
        high = max(high, 1.0)
    ticks = duration_ticks(low, high) if unit == "seconds" else nice_ticks(low, high, integer=integer)
    scale = LinearScale(ticks[0], ticks[-1], frame.height - frame.bottom, frame.top)
    return scale, [Tick(value, scale(value), format_value(value, unit, compact=True)) for value in ticks]


def _trend(values: list[float]) -> str:
    """Rising, falling or steady: the mean of the last third against the first third (10 % either way)."""
    if len(values) < 3:
        return ""
    third = max(1, len(values) // 3)
    first = sum(values[:third]) / third
    last = sum(values[-third:]) / third
    if first == last or (first != 0 and abs(last - first) / abs(first) < 0.10):
        return "steady"
    return "rising" if last > first else "falling"


def describe(name: str, labels: Sequence[str], values: Sequence[float | None], unit: Unit, *, series: bool) -> str:
    """One sentence about one series: its range of categories, highest, lowest and (for a series over time) its
    trend. Used for the SVG's <desc>, which is what a screen reader announces for the chart."""
    points = [(label, value) for label, value in zip(labels, values, strict=False) if value is not None]
    if not points:
        return f"{name}: no data."
    high_label, high = max(points, key=lambda point: point[1])
    low_label, low = min(points, key=lambda point: point[1])
    if high == low:
        where = f" from {points[0][0]} to {points[-1][0]}" if series and len(points) > 1 else ""
        return f"{name}: {format_value(high, unit)} throughout{where}."
    sentence = (
        f"{name}: highest {format_value(high, unit)} ({high_label}), lowest {format_value(low, unit)} ({low_label})"
    )
    if series:
        sentence = f"{name} from {points[0][0]} to {points[-1][0]}: " + sentence[len(name) + 2 :]
        trend = _trend([value for _, value in points])
        if trend:
            sentence += f", {trend}"
    return sentence + "."


def _empty(kind: str, chart_id: str, title: str, unit: Unit, frame: Frame, headers: list[str]) -> Chart:
    return Chart(
        kind=kind,  # type: ignore[arg-type]
        chart_id=chart_id,
        title=title,
        description=f"{title}: no data for this period.",
        width=frame.width,
        height=frame.height,
        unit=unit,
        empty=True,
        table=Table(headers, []),
    )


def _category_ticks(labels: Sequence[str], centres: list[float]) -> list[Tick]:
    """Category labels for the x axis; with many categories every k-th, counted back from the last (the most
    recent day), which is the one a reader looks for. Every other kept label is minor (hidden on phones)."""
    every = _label_every(len(labels))
    last = len(labels) - 1
    kept = [index for index in range(len(labels)) if (last - index) % every == 0]
    return [
        Tick(index, round(centres[index], 2), labels[index], minor=len(kept) > 4 and (last - index) // every % 2 == 1)
        for index in kept
    ]


def bar_chart(
    *,
    chart_id: str,
    title: str,
    labels: Sequence[str],
    values: Sequence[Number | None],
    unit: Unit = "count",
    series_name: str = "",
    over_time: bool = False,
    frame: Frame | None = None,
    category: str = "",
) -> Chart:
    """Vertical bars, one per category (a missing value draws no bar); zero is always on the axis so a negative
    value (a loss, a negative ROI) hangs below it. Values are written above the bars when there are few."""
    frame = frame or Frame()
    name = series_name or title
    numbers = _floats(values)
    if not labels or all(value is None for value in numbers):
        return _empty("bar", chart_id, title, unit, frame, [category, name])
    present = [value for value in numbers if value is not None]
    integer = unit == "count" and all(value == int(value) for value in present)
    scale, y_ticks = _value_ticks(present, frame, unit, integer=integer)
    plot_width = frame.width - frame.left - frame.right
    slot = plot_width / len(labels)
    width = max(1.0, slot * 0.7)
    zero = scale(0)
    centres = [frame.left + slot * (index + 0.5) for index in range(len(labels))]
    show_labels = len(labels) <= 12
    bars = []
    for index, value in enumerate(numbers):
        if value is None:
            continue
        y = scale(value)
        top, height = (y, zero - y) if value >= 0 else (zero, y - zero)
        text = format_value(value, unit)
        bars.append(
            Bar(
                x=round(centres[index] - width / 2, 2),
                y=round(top, 2),
                width=round(width, 2),
                height=round(max(height, 0.0), 2),
                series=0,
                title=f"{labels[index]}: {text}",
                label=format_value(value, unit, compact=True) if show_labels else "",
                label_x=round(centres[index], 2),
                label_y=round(top - 4 if value >= 0 else top + height + 12, 2),
            )
        )
    return Chart(
        kind="bar",
        chart_id=chart_id,
        title=title,
        description=describe(name, labels, numbers, unit, series=over_time),
        width=frame.width,
        height=frame.height,
        unit=unit,
        empty=False,
        left=frame.left,
        top=frame.top,
        right=frame.width - frame.right,
        bottom=frame.height - frame.bottom,
        baseline=round(zero, 2),
        x_ticks=_category_ticks(labels, centres),
        y_ticks=y_ticks,
        bars=bars,
        table=Table(
            [category, name], [[label, format_value(value, unit)] for label, value in zip(labels, numbers, strict=True)]
        ),
    )


def horizontal_bar_chart(
    *,
    chart_id: str,
    title: str,
    labels: Sequence[str],
    values: Sequence[Number | None],
    unit: Unit = "count",
    series_name: str = "",
    width: int = 560,
    category: str = "",
) -> Chart:
    """Horizontal bars, for categories with long names (reviewers, processes, error kinds): the names stay
    readable on the left, one row each, and the value is written at the end of each bar."""
    name = series_name or title
    numbers = _floats(values)
    row = 28
    frame = Frame(width=width, height=max(80, row * len(labels) + 40), left=200, right=72, top=8, bottom=28)
    if not labels or all(value is None for value in numbers):
        return _empty("hbar", chart_id, title, unit, Frame(width=width, height=80), [category, name])
    present = [value for value in numbers if value is not None]
    integer = unit == "count" and all(value == int(value) for value in present)
    low, high = min([0.0, *present]), max([0.0, *present])
    ticks = duration_ticks(low, high, count=4) if unit == "seconds" else nice_ticks(low, high, count=4, integer=integer)
    scale = LinearScale(ticks[0], ticks[-1], frame.left, frame.width - frame.right)
    zero = scale(0)
    bars = []
    x_ticks = [Tick(value, scale(value), format_value(value, unit, compact=True)) for value in ticks]
    y_ticks = []
    for index, value in enumerate(numbers):
        centre = frame.top + row * (index + 0.5)
        label = labels[index] if len(labels[index]) <= 20 else labels[index][:19] + "…"
        y_ticks.append(Tick(index, round(centre, 2), label))
        if value is None:
            continue
        x = scale(value)
        left, length = (zero, x - zero) if value >= 0 else (x, zero - x)
        bars.append(
            Bar(
                x=round(left, 2),
                y=round(centre - row * 0.35, 2),
                width=round(max(length, 0.0), 2),
                height=round(row * 0.7, 2),
                series=0,
                title=f"{labels[index]}: {format_value(value, unit)}",
                label=format_value(value, unit, compact=True),
                label_x=round((left + length + 4) if value >= 0 else left - 4, 2),
                label_y=round(centre + 4, 2),
            )
        )
    return Chart(
        kind="hbar",
        chart_id=chart_id,
        title=title,
        description=describe(name, labels, numbers, unit, series=False),
        width=frame.width,
        height=frame.height,
        unit=unit,
        empty=False,
        left=frame.left,
        top=frame.top,
        right=frame.width - frame.right,
        bottom=frame.height - frame.bottom,
        baseline=round(zero, 2),
        x_ticks=x_ticks,
        y_ticks=y_ticks,
        bars=bars,
        table=Table(
            [category, name], [[label, format_value(value, unit)] for label, value in zip(labels, numbers, strict=True)]
        ),
    )


def stacked_bar_chart(
    *,
    chart_id: str,
    title: str,
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[Number | None]]],
    unit: Unit = "count",
    over_time: bool = False,
    note: str = "",
    frame: Frame | None = None,
    category: str = "",
) -> Chart:
    """Bars of stacked segments, one segment per series (non-negative parts of a whole: machine, queue and
    human time; open cases and open approvals). Each segment has its series' pattern, and the legend names them."""
    frame = frame or Frame()
    headers = [category, *[name for name, _ in series], "Total"]
    columns = [_floats(values) for _, values in series]
    if not labels or not columns or all(value is None for column in columns for value in column):
        return _empty("stacked", chart_id, title, unit, frame, headers)
    totals = [sum(max(column[index] or 0.0, 0.0) for column in columns) for index in range(len(labels))]
    integer = unit == "count" and all(total == int(total) for total in totals)
    scale, y_ticks = _value_ticks(totals, frame, unit, integer=integer)
    plot_width = frame.width - frame.left - frame.right
    slot = plot_width / len(labels)
    width = max(1.0, slot * 0.6)
    centres = [frame.left + slot * (index + 0.5) for index in range(len(labels))]
    bars = []
    for index, label in enumerate(labels):
        running = 0.0
        for series_index, column in enumerate(columns):
            value = max(column[index] or 0.0, 0.0)
            if value == 0:
                continue
            top = scale(running + value)
            bottom = scale(running)
            running += value
            bars.append(
                Bar(
                    x=round(centres[index] - width / 2, 2),
                    y=round(top, 2),
                    width=round(width, 2),
                    height=round(bottom - top, 2),
                    series=series_index,
                    title=f"{label}, {series[series_index][0]}: {format_value(value, unit)}",
                )
            )
    sentences = [
        describe(f"{label} total", [label], [totals[index]], unit, series=False) for index, label in enumerate(labels)
    ]
    if over_time or len(labels) > 4:
        sentences = [describe(f"{title} (total)", labels, totals, unit, series=over_time)]
    parts = ", ".join(name for name, _ in series)
    rows = [
        [label, *[format_value(column[index], unit) for column in columns], format_value(totals[index], unit)]
        for index, label in enumerate(labels)
    ]
    return Chart(
        kind="stacked",
        chart_id=chart_id,
        title=title,
        description=f"Stacked bars of {parts}. " + " ".join(sentences),
        width=frame.width,
        height=frame.height,
        unit=unit,
        empty=False,
        left=frame.left,
        top=frame.top,
        right=frame.width - frame.right,
        bottom=frame.height - frame.bottom,
        baseline=round(scale(0), 2),
        x_ticks=_category_ticks(labels, centres),
        y_ticks=y_ticks,
        bars=bars,
        legend=[LegendItem(index % SERIES_STYLES, name) for index, (name, _) in enumerate(series)],
        table=Table(headers, rows),
        note=note,
    )


def line_chart(
    *,
    chart_id: str,
    title: str,
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[Number | None]]],
    unit: Unit = "count",
    frame: Frame | None = None,
    category: str = "",
) -> Chart:
    """One line per series over the categories (days), with a marker per point; a missing value breaks the line
    rather than drawing a false zero. Series differ by dash and marker shape as well as colour."""
    frame = frame or Frame()
    headers = [category, *[name for name, _ in series]]
    columns = [_floats(values) for _, values in series]
    present = [value for column in columns for value in column if value is not None]
    if not labels or not present:
        return _empty("line", chart_id, title, unit, frame, headers)
    integer = unit == "count" and all(value == int(value) for value in present)
    scale, y_ticks = _value_ticks(present, frame, unit, integer=integer)
    plot_width = frame.width - frame.left - frame.right
    if len(labels) == 1:
        xs = [frame.left + plot_width / 2]
    else:
        xs = [frame.left + plot_width * index / (len(labels) - 1) for index in range(len(labels))]
    lines = []
    for series_index, column in enumerate(columns):
        segments: list[str] = []
        current: list[str] = []
        dots = []
        for index, value in enumerate(column):
            if value is None:
                if current:
                    segments.append(" ".join(current))
                current = []
                continue
            x, y = round(xs[index], 2), round(scale(value), 2)
            current.append(f"{x},{y}")
            dots.append(Dot(x, y, f"{labels[index]}, {series[series_index][0]}: {format_value(value, unit)}"))
        if current:
            segments.append(" ".join(current))
        lines.append(Line(series_index % SERIES_STYLES, series[series_index][0], segments, dots))
    description = " ".join(
        describe(name, labels, column, unit, series=True) for (name, _), column in zip(series, columns, strict=True)
    )
    rows = [[label, *[format_value(column[index], unit) for column in columns]] for index, label in enumerate(labels)]
    return Chart(
        kind="line",
        chart_id=chart_id,
        title=title,
        description=description,
        width=frame.width,
        height=frame.height,
        unit=unit,
        empty=False,
        left=frame.left,
        top=frame.top,
        right=frame.width - frame.right,
        bottom=frame.height - frame.bottom,
        baseline=round(scale(0), 2),
        x_ticks=_category_ticks(labels, xs),
        y_ticks=y_ticks,
        lines=lines,
        legend=[LegendItem(index % SERIES_STYLES, name) for index, (name, _) in enumerate(series)],
        table=Table(headers, rows),
    )


def sparkline(
    *, chart_id: str, title: str, labels: Sequence[str], values: Sequence[Number | None], unit: Unit = "count"
) -> Chart:
    """A small line without axes for a KPI tile: the shape of the period, with the last point marked."""
    frame = Frame(width=120, height=32, left=2, right=2, top=3, bottom=3)
    numbers = _floats(values)
    present = [value for value in numbers if value is not None]
    if not present:
        return _empty("sparkline", chart_id, title, unit, frame, ["", title])
    low, high = min(present), max(present)
    if low == high:
        low, high = low - 1, high + 1
    scale = LinearScale(low, high, frame.height - frame.bottom, frame.top)
    span = frame.width - frame.left - frame.right
    count = len(numbers)
    xs = [frame.left + (span * index / (count - 1) if count > 1 else span / 2) for index in range(count)]
    points = [
        f"{round(xs[index], 2)},{round(scale(value), 2)}" for index, value in enumerate(numbers) if value is not None
    ]
    last_index = max(index for index, value in enumerate(numbers) if value is not None)
    last = numbers[last_index]
    assert last is not None
    dot = Dot(round(xs[last_index], 2), round(scale(last), 2), f"{labels[last_index]}: {format_value(last, unit)}")
    return Chart(
        kind="sparkline",
        chart_id=chart_id,
        title=title,
        description=describe(title, labels, numbers, unit, series=True),
        width=frame.width,
        height=frame.height,
        unit=unit,
        empty=False,
        lines=[Line(0, title, [" ".join(points)], [dot])],
        table=Table(
            ["", title], [[label, format_value(value, unit)] for label, value in zip(labels, numbers, strict=True)]
        ),
    )


def log_edges(low: float, high: float, *, per_decade: int = 4) -> list[float]:
    """Bucket edges growing by a constant factor (10 ** (1 / per_decade)) from `low` to at least `high` (both > 0):
    the log scale that keeps a 200 ms step and a 3-day approval on one readable histogram."""
    if low <= 0 or high <= 0:
        raise ValueError("log-scale edges need positive bounds")
    factor = 10 ** (1 / per_decade)
    edges = [low]
    while edges[-1] < high * (1 - 1e-9):
        edges.append(edges[-1] * factor)
    if len(edges) == 1:
        edges.append(low * factor)
    return edges


def bucket_counts(values: Sequence[float], edges: Sequence[float]) -> list[int]:
    """How many `values` fall in each [edge, next edge) bucket; values below the first edge count in the first
    bucket and values at or above the last edge in the last one, so no observation is dropped."""
    counts = [0] * (len(edges) - 1)
    for value in values:
        index = 0
        while index < len(counts) - 1 and value >= edges[index + 1]:
            index += 1
        counts[index] += 1
    return counts


def histogram(
    *,
    chart_id: str,
    title: str,
    edges: Sequence[float],
    counts: Sequence[int],
    edge_unit: Unit = "seconds",
    frame: Frame | None = None,
) -> Chart:
    """Adjacent bars over log-scale buckets (equal widths, since each bucket spans the same ratio), the x axis
    labelled at the bucket edges. `edges` has one more element than `counts`."""
    frame = frame or Frame()
    if len(edges) != len(counts) + 1:
        raise ValueError("a histogram needs one more edge than buckets")
    labels = [
        f"{format_value(edges[index], edge_unit)} – {format_value(edges[index + 1], edge_unit)}"
        for index in range(len(counts))
    ]
    if not counts or sum(counts) == 0:
        return _empty("histogram", chart_id, title, "count", frame, ["Bucket", "Items"])
    scale, y_ticks = _value_ticks([float(count) for count in counts], frame, "count", integer=True)
    plot_width = frame.width - frame.left - frame.right
    slot = plot_width / len(counts)
    zero = scale(0)
    bars = [
        Bar(
            x=round(frame.left + slot * index + 0.5, 2),
            y=round(scale(count), 2),
            width=round(max(slot - 1, 1.0), 2),
            height=round(zero - scale(count), 2),
            series=0,
            title=f"{labels[index]}: {count} item{'' if count == 1 else 's'}",
        )
        for index, count in enumerate(counts)
        if count
    ]
    every = _label_every(len(edges))
    kept = [index for index in range(len(edges)) if index % every == 0]
    x_ticks = [
        Tick(
            edges[index],
            round(frame.left + slot * index, 2),
            format_value(edges[index], edge_unit),
            minor=len(kept) > 4 and index // every % 2 == 1,
        )
        for index in kept
    ]
    total = sum(counts)
    busiest = max(range(len(counts)), key=lambda index: counts[index])
    description = (
        f"{title}: {total} item{'' if total == 1 else 's'} from {labels[0].split(' – ')[0]} to "
        f"{labels[-1].split(' – ')[1]}; most ({counts[busiest]}) took {labels[busiest]}."
    )
    return Chart(
        kind="histogram",
        chart_id=chart_id,
        title=title,
        description=description,
        width=frame.width,
        height=frame.height,
        unit="count",
        empty=False,
        left=frame.left,
        top=frame.top,
        right=frame.width - frame.right,
        bottom=frame.height - frame.bottom,
        baseline=round(zero, 2),
        x_ticks=x_ticks,
        y_ticks=y_ticks,
        bars=bars,
        table=Table(["Bucket", "Items"], [[label, str(count)] for label, count in zip(labels, counts, strict=True)]),
    )
