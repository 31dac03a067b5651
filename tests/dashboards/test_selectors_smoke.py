from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from apps.dashboards.selectors import DashboardFilter, overview_for_user

pytestmark = pytest.mark.django_db


def test_an_empty_period_has_no_data_and_every_kpi_says_how(manager: Any) -> None:
    overview = overview_for_user(manager, DashboardFilter(start=date(2026, 11, 1), end=date(2026, 11, 30)))
    assert overview.has_data is False
    assert len(overview.series) == 30
    assert all(kpi.how for kpi in overview.kpis)
    assert {kpi.key for kpi in overview.kpis} >= {"cases", "straight_through_rate", "roi", "backlog"}
