"""KPI inputs: managers change them through the pages, every change is audited with before and after, bad values
are form errors that save nothing, and the figures follow the new inputs."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from apps.approvals.models import ApprovalDecision, ApprovalRequest
from apps.audit.models import AuditEvent
from apps.dashboards.models import EndpointKpiInput, KpiSettings, RollupRebuildRequest, RollupState, WorkflowKpiInput
from apps.dashboards.rollups import rollups_refresh
from apps.dashboards.selectors import overview_for_user
from apps.runs.models import Run
from apps.workflows.models import Workflow
from tests.dashboards.dataset import EXPECTED, Dataset, dataset_build

pytestmark = pytest.mark.django_db


@pytest.fixture
def data(analyst: Any, reviewer: Any) -> Dataset:
    return dataset_build(owner=analyst, reviewer=reviewer)


def _client(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _last_event(verb: str) -> dict[str, Any]:
    event = AuditEvent.objects.filter(verb=verb).order_by("-pk").first()
    assert event is not None, f"no {verb} event"
    return {"actor": event.actor_id, "data": json.loads(event.data), "target": event.target_id}


def test_a_manager_changes_the_rate_and_the_audit_trail_says_from_what(data: Dataset, manager: Any) -> None:
    response = _client(manager).post(
        reverse("dashboards:inputs-rates"), {"reviewer_hourly_rate": "75.50", "currency": "usd"}
    )
    assert response.status_code == 302
    row = KpiSettings.objects.get()
    assert (row.reviewer_hourly_rate, row.currency) == (Decimal("75.50"), "USD")
    event = _last_event("kpi_settings.changed")
    assert event["actor"] == manager.pk
    assert event["data"]["changes"] == {
        "reviewer_hourly_rate": {"before": "60.00", "after": "75.50"},
        "currency": {"before": "EUR", "after": "USD"},
    }
    # The figures follow: 35 reviewer minutes now cost 44.04 instead of 35.00.
    figures = {k.key: k.value for k in overview_for_user(manager, data.filter_x(), now=data.now).kpis}
    assert figures["run_cost"] == Decimal("48.30")  # 4.25 + 0.01 + 35/60 × 75.50 = 48.2975


@pytest.mark.parametrize(
    "posted",
    [
        {"reviewer_hourly_rate": "-1", "currency": "EUR"},
        {"reviewer_hourly_rate": "abc", "currency": "EUR"},
        {"reviewer_hourly_rate": "10", "currency": "EURO"},
        {"reviewer_hourly_rate": "10", "currency": "E1R"},
        {"reviewer_hourly_rate": "", "currency": "EUR"},
    ],
)
def test_bad_rates_are_form_errors_and_save_nothing(data: Dataset, manager: Any, posted: dict[str, str]) -> None:
    events = AuditEvent.objects.exclude(verb__startswith="request.").count()
    response = _client(manager).post(reverse("dashboards:inputs-rates"), posted)
    assert response.status_code == 400
    assert b"field-error" in response.content
    assert KpiSettings.objects.get().reviewer_hourly_rate == Decimal("60")
    assert AuditEvent.objects.exclude(verb__startswith="request.").count() == events


@pytest.mark.parametrize(
    ("persona", "status"),
    [("analyst", 403), ("reviewer", 403), ("auditor", 403), ("outsider", 403), ("manager", 302), ("anonymous", 302)],
)
def test_rates_post_by_persona(request: pytest.FixtureRequest, persona: str, status: int) -> None:
    client = Client() if persona == "anonymous" else _client(request.getfixturevalue(persona))
    response = client.post(reverse("dashboards:inputs-rates"), {"reviewer_hourly_rate": "99", "currency": "EUR"})
    assert response.status_code == status
    changed = KpiSettings.objects.filter(reviewer_hourly_rate=Decimal("99")).exists()
    assert changed is (persona == "manager")
    if persona == "anonymous":
        assert "/login" in response["Location"] or "login" in response["Location"]


def test_workflow_inputs_change_the_baseline_on_the_workflow_audited(data: Dataset, manager: Any) -> None:
    url = reverse("dashboards:inputs-workflow", args=[data.claims.slug])
    page = _client(manager).get(url)
    assert page.status_code == 200 and b"Baseline minutes per case" in page.content
    response = _client(manager).post(
        url, {"baseline_minutes_per_case": "30", "realisation_percent": "80", "build_cost": ""}
    )
    assert response.status_code == 302
    assert Workflow.objects.get(pk=data.claims.pk).baseline_minutes_per_case == Decimal("30")
    assert WorkflowKpiInput.objects.get(workflow=data.claims).build_cost is None
    event = _last_event("workflow.kpi_inputs_changed")
    assert event["target"] == str(data.claims.pk)
    assert event["data"]["changes"] == {
        "baseline_minutes_per_case": {"before": "45.00", "after": "30"},
        "build_cost": {"before": "5000.00", "after": None},
    }
    figures = {k.key: k.value for k in overview_for_user(manager, data.filter_x(), now=data.now).kpis}
    # 4 × 30 × 80 % = 96 min − 35 = 61 min saved; no build cost, so no payback.
    assert figures["hours_saved"] == Decimal("1.02")
    assert figures["payback"] is None


@pytest.mark.parametrize(
    "posted",
    [
        {"baseline_minutes_per_case": "-5", "realisation_percent": "80"},
        {"baseline_minutes_per_case": "30", "realisation_percent": "150"},
        {"baseline_minutes_per_case": "30", "realisation_percent": "80", "build_cost": "-1"},
        {"baseline_minutes_per_case": "thirty", "realisation_percent": "80"},
    ],
)
def test_bad_workflow_inputs_are_form_errors(data: Dataset, manager: Any, posted: dict[str, str]) -> None:
    response = _client(manager).post(reverse("dashboards:inputs-workflow", args=[data.claims.slug]), posted)
    assert response.status_code == 400 and b"field-error" in response.content
    assert Workflow.objects.get(pk=data.claims.pk).baseline_minutes_per_case == Decimal("45")


def test_endpoint_inputs_need_a_price_when_self_hosted_and_ask_for_a_rebuild(data: Dataset, manager: Any) -> None:
    url = reverse("dashboards:inputs-endpoint", args=[data.cloud.name])
    refused = _client(manager).post(url, {"self_hosted": "on", "gpu_hourly_price": ""})
    assert refused.status_code == 400 and b"hourly price" in refused.content
    assert not EndpointKpiInput.objects.filter(endpoint=data.cloud).exists()
    rollups_refresh(now=data.now)  # the first refresh sets the watermark
    response = _client(manager).post(url, {"self_hosted": "on", "gpu_hourly_price": "3.60"})
    assert response.status_code == 302
    event = _last_event("model_endpoint.kpi_inputs_changed")
    assert event["data"]["changes"]["self_hosted"] == {"before": False, "after": True}
    asked = RollupRebuildRequest.objects.get()
    assert asked.from_day <= data.today - timedelta(days=20)
    assert b"update within a few minutes" in _client(manager).get(url).content
    rollups_refresh(now=data.now)
    assert not RollupRebuildRequest.objects.exists() and RollupState.objects.get().rebuild_from is None
    cloud = {k.key: k.value for k in overview_for_user(manager, data.filter_x(), now=data.now).kpis}
    # The cloud calls of process X now cost their latency (1 s each, 7 calls) at 3.60 an hour: 0.007, not 4.25.
    assert cloud["run_cost"] == Decimal("35.02")


def test_a_workflow_she_may_not_read_is_404_and_one_she_may_not_change_403(
    data: Dataset, analyst: Any, manager: Any, reviewer: Any
) -> None:
    hidden = Workflow.objects.create(name="Hidden", slug="hidden", owner=manager)
    assert _client(analyst).get(reverse("dashboards:inputs-workflow", args=[hidden.slug])).status_code == 404
    assert _client(analyst).get(reverse("dashboards:inputs-workflow", args=[data.claims.slug])).status_code == 403
    assert _client(manager).get(reverse("dashboards:inputs-workflow", args=["no-such"])).status_code == 404
    assert _client(manager).get(reverse("dashboards:inputs-endpoint", args=["no-such"])).status_code == 404
    page = _client(analyst).get(reverse("dashboards:inputs"))
    assert page.status_code == 200
    assert b"Claims triage" in page.content and b"Hidden" not in page.content
    assert b"Save the rate" not in page.content, "no form for those who may not change"


def test_the_refresh_job_follows_new_and_finishing_cases(data: Dataset, manager: Any, reviewer: Any) -> None:
    """The watermark job picks up a case that arrived after its last run, and the decision on an item that was
    open at its last run (a day that held open work is rebuilt again)."""
    rollups_refresh(now=data.now)
    flt = data.filter_x()
    before = {k.key: k.value for k in overview_for_user(manager, flt, now=data.now).kpis}
    # C6 (open 6 days) is decided now and finishes.
    item = ApprovalRequest.objects.get(state="pending", run__created_at__lt=data.now - timedelta(days=2))
    now = timezone.now()
    ApprovalRequest.objects.filter(pk=item.pk).update(
        state="approved", claimed_at=now - timedelta(seconds=60), decided_at=now, decided_by=reviewer
    )
    ApprovalDecision.objects.create(request=item, actor=reviewer, decision="approved", time_spent_seconds=60)
    Run.objects.filter(pk=item.run_id).update(status="succeeded", finished_at=now)
    # And a new case arrives.
    fresh = Run.objects.create(workflow=data.claims, version=data.claims_v2, status="succeeded", trigger="manual")
    Run.objects.filter(pk=fresh.pk).update(started_at=now, finished_at=now + timedelta(seconds=1))
    state = rollups_refresh(now=now + timedelta(seconds=5))
    assert state.last_days >= 2
    after = {k.key: k.value for k in overview_for_user(manager, flt, now=now).kpis}
    assert after["cases"] == before["cases"] + 1 == EXPECTED["cases"] + 1
    assert after["throughput"] == before["throughput"] + 2
