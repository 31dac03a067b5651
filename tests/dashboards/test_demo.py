"""The demo's dashboard history: `seed_demo` writes 60 days of marked demo cases and their rollups, once."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.utils import timezone

from apps.dashboards.demo import DEMO_TRIGGER
from apps.dashboards.models import WorkflowDayRollup
from apps.dashboards.selectors import DashboardFilter, overview_for_user
from apps.runs.models import Run

pytestmark = pytest.mark.django_db


def test_seed_demo_gives_the_manager_a_real_dashboard_once(settings: Any, tmp_path: Any) -> None:
    settings.AIOS_DATA_DIR = tmp_path
    call_command("seed_demo")
    demo_runs = Run.objects.filter(trigger=DEMO_TRIGGER)
    count = demo_runs.count()
    assert count > 100
    assert all(inputs == {"demo_history": True} for inputs in demo_runs.values_list("inputs", flat=True)[:50])
    from apps.accounts.models import User

    manager = User.objects.get(username="max")
    today = timezone.localdate()
    overview = overview_for_user(manager, DashboardFilter(start=today - timedelta(days=29), end=today))
    figures = {kpi.key: kpi.value for kpi in overview.kpis}
    assert overview.has_data and figures["cases"] > 50
    assert figures["escalation_rate"] and figures["hours_saved"] > 0 and figures["roi"] is not None
    assert len([row for row in overview.processes if row.kpis["cases"].value]) >= 2
    rows = WorkflowDayRollup.objects.count()
    call_command("seed_demo")
    assert Run.objects.filter(trigger=DEMO_TRIGGER).count() == count, "a second seed writes nothing"
    assert WorkflowDayRollup.objects.count() == rows
