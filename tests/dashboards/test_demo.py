"""The demo's dashboard history: `seed_demo` writes 60 days of marked demo cases and their rollups, once, with the
KPI inputs a real team would enter, so cost per case and return land in believable ranges."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.core.management import call_command
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.dashboards.demo import DEMO_TRIGGER, GPU_HOURLY_PRICE
from apps.dashboards.models import EndpointKpiInput, WorkflowDayRollup, WorkflowKpiInput
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
    # A team's inputs: the demo endpoint self-hosted on a rented GPU, a cautious realisation, a build cost.
    endpoint = EndpointKpiInput.objects.get()
    assert endpoint.self_hosted and endpoint.gpu_hourly_price == GPU_HOURLY_PRICE
    assert set(WorkflowKpiInput.objects.values_list("realisation_percent", flat=True)) == {Decimal("70")}
    # Believable money: the GPU costs cents per case, a reviewer's minutes most of the run cost, and the return is
    # in the hundreds of percent to about a thousand (it read 800,000 % and more with token prices of a fraction of
    # a cent).
    assert Decimal("0.001") < figures["cost_per_case"] < Decimal("5")
    run_cost = next(kpi for kpi in overview.kpis if kpi.key == "run_cost")
    assert run_cost.inputs["GPU cost (GPU-seconds × hourly price)"] != "0.00 EUR"
    # The history follows the weekdays of the 60 days before today, so the figure moves a little from day to day
    # (1,101 % on a Monday): the bound guards against the absurd, not against a week's rhythm.
    assert Decimal("1") < figures["roi"] < Decimal("20"), figures["roi"]
    assert figures["payback"] is not None and Decimal("1") < figures["payback"] < Decimal("36")
    rows = WorkflowDayRollup.objects.count()
    last_event = AuditEvent.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
    call_command("seed_demo")
    assert Run.objects.filter(trigger=DEMO_TRIGGER).count() == count, "a second seed writes nothing"
    assert WorkflowDayRollup.objects.count() == rows
    again = list(AuditEvent.objects.filter(pk__gt=last_event).values_list("verb", "target_type", "data"))
    assert not again, f"nor changes any input again: {again}"
