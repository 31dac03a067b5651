"""Our chart module (apps/dashboards/charts.py): ticks, scales, formatting and chart geometry, including the
edge cases a dashboard meets (all zeros, one point, negative values, huge values, nothing at all), and the SVG the
templates draw from it (figure, title, desc, a title per mark, the data table, no inline style)."""

from __future__ import annotations

import itertools
import math
import re
from decimal import Decimal

import pytest
from django.template.loader import render_to_string

from apps.dashboards import charts
from apps.dashboards.charts import (
    LinearScale,
    bar_chart,
    bucket_counts,
    format_compact,
    format_duration,
    format_value,
    histogram,
    horizontal_bar_chart,
    line_chart,
    log_edges,
    nice_number,
    nice_ticks,
    sparkline,
    stacked_bar_chart,
)

DAYS = [f"{day} Nov" for day in range(1, 31)]


# Ticks and scales --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (0, 7, [0, 2, 4, 6, 8]),
        (0, 100, [0, 20, 40, 60, 80, 100]),
        (0, 0.3, [0, 0.1, 0.2, 0.3]),
        (-3.2, 17.8, [-10, 0, 10, 20]),
        (0, 1_000_000_000_000_000, [0, 2e14, 4e14, 6e14, 8e14, 1e15]),
    ],
)
def test_nice_ticks_cover_the_range_with_round_steps(low: float, high: float, expected: list[float]) -> None:
    ticks = nice_ticks(low, high)
    assert ticks == pytest.approx(expected)
    assert ticks[0] <= low and ticks[-1] >= high


def test_ticks_of_degenerate_ranges() -> None:
    assert nice_ticks(0, 0)[0] == 0 and nice_ticks(0, 0)[-1] == 1  # all zeros: 0..1, not a division by zero
    assert nice_ticks(5, 5)[0] == 0 and nice_ticks(5, 5)[-1] == 5  # one value: from zero to it
    assert nice_ticks(-5, -5)[0] == -5 and nice_ticks(-5, -5)[-1] == 0  # one negative value: it to zero
    assert nice_ticks(10, 0) == nice_ticks(0, 10)  # bounds in either order
    with pytest.raises(ValueError):
        nice_ticks(0, math.inf)


def test_count_axes_never_show_fractions() -> None:
    assert nice_ticks(0, 1, integer=True) == [0, 1]
    assert all(tick == int(tick) for tick in nice_ticks(0, 3, integer=True))


def test_ticks_carry_no_float_noise() -> None:
    for high in (0.3, 0.7, 1.1, 3.3, 0.07):
        for tick in nice_ticks(0, high):
            assert len(repr(tick)) <= 6, tick


def test_duration_axes_step_in_round_durations() -> None:
    assert charts.duration_ticks(0, 3000) == [0, 900, 1800, 2700, 3600]  # quarter hours, not 16.7 min
    assert charts.duration_ticks(0, 95000)[1] == 43200  # half days
    assert charts.duration_ticks(0, 0.9) == [0, 0.5, 1]
    assert charts.duration_ticks(0, 0) == [0, 0.5, 1]
    assert charts.duration_ticks(0, 1e7)[1] % 604800 == 0  # whole weeks beyond the table
    chart = bar_chart(chart_id="c", title="Wait", labels=["a", "b"], values=[100, 2950], unit="seconds")
    assert [tick.label for tick in chart.y_ticks] == ["0 s", "15 min", "30 min", "45 min", "1 h"]


def test_nice_number() -> None:
    assert nice_number(7, round_to_nearest=False) == 10
    assert nice_number(7, round_to_nearest=True) == 10
    assert nice_number(2.5, round_to_nearest=True) == 2
    assert nice_number(0, round_to_nearest=True) == 1


def test_linear_scale_maps_and_inverts_direction() -> None:
    scale = LinearScale(0, 10, 200, 0)
    assert scale(0) == 200 and scale(10) == 0 and scale(5) == 100
    assert LinearScale(3, 3, 0, 100)(3) == 50  # an empty domain maps to the middle


# Formatting ----------------------------------------------------------------------------------------------------


def test_durations_read_as_people_say_them() -> None:
    assert format_duration(0) == "0 s"
    assert format_duration(0.85) == "850 ms"
    assert format_duration(4.25) == "4.2 s" or format_duration(4.25) == "4.3 s"
    assert format_duration(720) == "12 min"
    assert format_duration(9000) == "2.5 h"
    assert format_duration(86400) == "1 day"
    assert format_duration(86400 * 3.1) == "3.1 days"
    assert format_duration(None) == "–"


def test_values_by_unit() -> None:
    assert format_value(14.2857, "percent") == "14.3 %"
    assert format_value(Decimal("5.6079"), "money", currency="EUR") == "EUR 5.61"
    assert format_value(Decimal("-12.5"), "money", currency="EUR") == "EUR -12.50"
    assert format_value(Decimal("1.7767"), "ratio") == "177.7 %"
    assert format_value(Decimal("-0.25"), "ratio") == "-25 %"
    assert format_value(Decimal("70.66"), "months") == "70.7 months"
    assert format_value(1, "months") == "1 month"
    assert format_value(1234567, "count") == "1.2M"
    assert format_value(None, "count") == "–"
    assert format_value(math.nan, "count") == "–"
    assert format_compact(950) == "950"
    assert format_compact(1200) == "1.2k"
    assert format_compact(-3_400_000) == "-3.4M"
    assert format_compact(5.6e12) == "5.6T"
    assert format_compact(0.0005) == "0.0005" and format_compact(0.00123) == "0.0012"
    assert format_value(Decimal("0.0012"), "money", currency="EUR") == "EUR 0.0012"
    assert format_value(Decimal("1667903.6") / 100, "ratio") == "1,667,904 %"


# Charts --------------------------------------------------------------------------------------------------------


def test_bar_chart_geometry_stays_in_the_plot() -> None:
    chart = bar_chart(chart_id="c", title="Cases", labels=DAYS, values=[day % 7 for day in range(30)], over_time=True)
    assert not chart.empty and len(chart.bars) == 30
    for bar in chart.bars:
        assert chart.left <= bar.x and bar.x + bar.width <= chart.right + 0.01
        assert chart.top - 0.01 <= bar.y and bar.y + bar.height <= chart.bottom + 0.01
    # Thirty days get at most MAX_X_LABELS labels, the most recent day always among them.
    assert len(chart.x_ticks) <= charts.MAX_X_LABELS and chart.x_ticks[-1].label == "30 Nov"
    assert chart.description.startswith("Cases from 1 Nov to 30 Nov: highest 6")
    assert len(chart.table.rows) == 30


def test_all_zeros_draw_a_flat_chart_not_an_error() -> None:
    chart = bar_chart(chart_id="c", title="Cases", labels=DAYS[:5], values=[0] * 5)
    assert not chart.empty
    assert all(bar.height == 0 for bar in chart.bars)
    assert "0 throughout" in chart.description


def test_one_point() -> None:
    line = line_chart(chart_id="l", title="Cases", labels=["1 Nov"], series=[("Cases", [3])])
    assert len(line.lines[0].dots) == 1
    assert line.lines[0].dots[0].x == pytest.approx((line.left + line.right) / 2)
    spark = sparkline(chart_id="s", title="Cases", labels=["1 Nov"], values=[3])
    assert not spark.empty and spark.lines[0].dots


def test_negative_values_hang_below_zero() -> None:
    chart = bar_chart(chart_id="c", title="ROI", labels=["A", "B"], values=[Decimal("0.5"), Decimal("-2")])
    up, down = chart.bars
    assert up.y + up.height == pytest.approx(chart.baseline, abs=0.02)
    assert down.y == pytest.approx(chart.baseline, abs=0.02) and down.height > up.height
    assert chart.y_ticks[0].value < 0 < chart.y_ticks[-1].value
    hbar = horizontal_bar_chart(chart_id="h", title="ROI", labels=["A", "B"], values=[1, -1])
    assert hbar.bars[1].x + hbar.bars[1].width == pytest.approx(hbar.baseline, abs=0.02)


def test_huge_values() -> None:
    chart = bar_chart(chart_id="c", title="Tokens", labels=["A", "B"], values=[3e12, 1])
    assert chart.bars[0].height > 0 and chart.y_ticks[-1].label.endswith("T")
    assert all(math.isfinite(bar.height) for bar in chart.bars)


def test_empty_and_missing_data() -> None:
    for chart in (
        bar_chart(chart_id="c", title="Cases", labels=[], values=[]),
        bar_chart(chart_id="c", title="Cases", labels=["A"], values=[None]),
        line_chart(chart_id="l", title="Rate", labels=DAYS[:3], series=[("Rate", [None, None, None])]),
        stacked_bar_chart(chart_id="s", title="Backlog", labels=[], series=[]),
        histogram(chart_id="h", title="Time", edges=[1.0, 2.0], counts=[0]),
        sparkline(chart_id="p", title="Cases", labels=[], values=[]),
    ):
        assert chart.empty and "no data" in chart.description.lower()


def test_a_missing_value_breaks_the_line() -> None:
    chart = line_chart(
        chart_id="l", title="Rate", labels=DAYS[:5], series=[("Rate", [50, 60, None, 40, 45])], unit="percent"
    )
    assert len(chart.lines[0].segments) == 2 and len(chart.lines[0].dots) == 4
    assert chart.table.rows[2] == ["3 Nov", "–"]


def test_line_series_differ_beyond_colour() -> None:
    chart = line_chart(chart_id="l", title="Cases", labels=DAYS[:3], series=[("A", [1, 2, 3]), ("B", [3, 2, 1])])
    assert [line.series for line in chart.lines] == [0, 1]
    assert [item.name for item in chart.legend] == ["A", "B"]
    assert "A from 1 Nov to 3 Nov" in chart.description and "rising" in chart.description
    assert "falling" in chart.description


def test_stacked_bars_add_up() -> None:
    chart = stacked_bar_chart(
        chart_id="s",
        title="Backlog",
        labels=["< 1 h", "> 3 days"],
        series=[("Cases", [1, 2]), ("Approvals", [3, 0])],
    )
    first = [bar for bar in chart.bars if bar.x == chart.bars[0].x]
    assert len(first) == 2
    assert first[1].y + first[1].height == pytest.approx(first[0].y)  # the second segment sits on the first
    assert chart.table.rows == [["< 1 h", "1", "3", "4"], ["> 3 days", "2", "0", "2"]]
    assert {bar.series for bar in chart.bars} == {0, 1}


def test_log_histogram() -> None:
    edges = log_edges(1, 86400 * 3, per_decade=3)
    assert edges[0] == 1 and edges[-1] >= 86400 * 3
    assert all(b / a == pytest.approx(10 ** (1 / 3)) for a, b in itertools.pairwise(edges))
    counts = bucket_counts([0.2, 2, 30, 400, 400, 5000, 10**9], edges)
    assert sum(counts) == 7  # nothing below the first or above the last edge is dropped
    chart = histogram(chart_id="h", title="Time per item", edges=edges, counts=counts)
    assert len(chart.bars) == sum(1 for count in counts if count)
    assert "7 items" in chart.description
    with pytest.raises(ValueError):
        histogram(chart_id="h", title="x", edges=[1, 2], counts=[1, 2])
    with pytest.raises(ValueError):
        log_edges(0, 10)


# The SVG the templates draw ------------------------------------------------------------------------------------


def test_the_chart_template_is_accessible_and_csp_clean() -> None:
    chart = line_chart(
        chart_id="chart-x", title="Cases per day", labels=DAYS[:3], series=[("A", [1, 2, 3]), ("B", [0, 1, 0])]
    )
    html = render_to_string("dashboards/_chart.html", {"chart": chart})
    assert "<figure" in html and "<figcaption" in html and "Cases per day" in html
    assert 'role="img"' in html and 'aria-labelledby="chart-x-title chart-x-desc"' in html
    assert '<title id="chart-x-title">' in html and '<desc id="chart-x-desc">' in html
    assert html.count("<title>") == 6  # one per point
    assert "<summary>Data table" in html and "<table" in html
    assert " style=" not in html and "<script" not in html
    ids = re.findall(r'id="([^"]+)"', html)
    assert len(ids) == len(set(ids))


def test_stacked_bars_use_patterns_and_a_legend() -> None:
    chart = stacked_bar_chart(
        chart_id="chart-s", title="Cycle", labels=["Median"], series=[("Machine", [1]), ("Queue", [2]), ("Human", [3])]
    )
    html = render_to_string("dashboards/_chart.html", {"chart": chart})
    assert 'id="chart-s-p1"' in html and 'id="chart-s-p2"' in html
    assert 'fill="url(#chart-s-p1)"' in html
    assert html.count("<li>") == 3  # the legend names every series


def test_an_empty_chart_says_so() -> None:
    chart = bar_chart(chart_id="chart-e", title="Cases", labels=[], values=[])
    html = render_to_string("dashboards/_chart.html", {"chart": chart})
    assert "No data for this period." in html and "<svg" not in html
