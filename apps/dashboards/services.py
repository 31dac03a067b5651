"""Changes to the KPI inputs: the reviewers' loaded rate, each workflow's baseline, realisation and build cost, each
model endpoint's self-hosting and GPU price. Every change is audited with its before and after, in the same
transaction; a change that alters nothing records nothing."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.contrib.auth.models import AbstractUser
from django.db import transaction

from apps.audit.services import audit_record
from apps.core.exceptions import Forbidden, ValidationFailed
from apps.dashboards.models import (
    EndpointDayRollup,
    EndpointKpiInput,
    KpiSettings,
    RollupRebuildRequest,
    WorkflowKpiInput,
)
from apps.dashboards.selectors import can_change_kpi_inputs
from apps.inference.models import ModelEndpoint
from apps.workflows.models import Workflow


def _text(value: Any) -> Any:
    """A JSON-safe form of an input for the audit record (decimals as exact strings)."""
    return str(value) if isinstance(value, Decimal) else value


def _changes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: {"before": _text(before[name]), "after": _text(after[name])}
        for name in after
        if before[name] != after[name]
    }


def _require(actor: AbstractUser) -> None:
    if not can_change_kpi_inputs(actor):
        raise Forbidden("Only managers and admins change the KPI inputs.")


@transaction.atomic
def kpi_settings_update(*, actor: AbstractUser, reviewer_hourly_rate: Decimal, currency: str) -> KpiSettings:
    """Set the reviewers' loaded hourly rate and the currency every money figure is shown in."""
    _require(actor)
    currency = currency.strip().upper()
    if reviewer_hourly_rate < 0:
        raise ValidationFailed("The rate cannot be negative.", fields={"reviewer_hourly_rate": ["Enter 0 or more."]})
    if len(currency) != 3 or not currency.isalpha():
        raise ValidationFailed("Not a currency code.", fields={"currency": ["Enter a three-letter code like EUR."]})
    row, _ = KpiSettings.objects.select_for_update().get_or_create(pk=KpiSettings.SINGLETON_PK)
    before = {"reviewer_hourly_rate": row.reviewer_hourly_rate, "currency": row.currency}
    after = {"reviewer_hourly_rate": reviewer_hourly_rate, "currency": currency}
    changes = _changes(before, after)
    if changes:
        row.reviewer_hourly_rate, row.currency = reviewer_hourly_rate, currency
        row.updated_by = actor  # type: ignore[assignment]
        row.save()
        audit_record(actor=actor, verb="kpi_settings.changed", target=row, data={"changes": changes})
    return row


@transaction.atomic
def workflow_kpi_inputs_update(
    *,
    actor: AbstractUser,
    workflow: Workflow,
    baseline_minutes_per_case: Decimal,
    realisation_percent: Decimal,
    build_cost: Decimal | None,
) -> WorkflowKpiInput:
    """Set a workflow's baseline minutes per case (on the workflow itself), its realisation factor (0–100 %) and
    its one-off build cost (None: not known). The figures read these at request time, so no rebuild is needed."""
    _require(actor)
    problems: dict[str, list[str]] = {}
    if baseline_minutes_per_case < 0:
        problems["baseline_minutes_per_case"] = ["Enter 0 or more minutes."]
    if not Decimal(0) <= realisation_percent <= Decimal(100):
        problems["realisation_percent"] = ["Enter a percentage from 0 to 100."]
    if build_cost is not None and build_cost < 0:
        problems["build_cost"] = ["Enter 0 or more, or leave it empty."]
    if problems:
        raise ValidationFailed("Some inputs are out of range.", fields=problems)
    workflow = Workflow.objects.select_for_update().get(pk=workflow.pk)
    inputs, _ = WorkflowKpiInput.objects.get_or_create(workflow=workflow)
    before = {
        "baseline_minutes_per_case": workflow.baseline_minutes_per_case,
        "realisation_percent": inputs.realisation_percent,
        "build_cost": inputs.build_cost,
    }
    after = {
        "baseline_minutes_per_case": baseline_minutes_per_case,
        "realisation_percent": realisation_percent,
        "build_cost": build_cost,
    }
    changes = _changes(before, after)
    if changes:
        if "baseline_minutes_per_case" in changes:
            workflow.baseline_minutes_per_case = baseline_minutes_per_case
            workflow.save(update_fields=["baseline_minutes_per_case", "updated_at"])
        inputs.realisation_percent, inputs.build_cost = realisation_percent, build_cost
        inputs.save()
        audit_record(actor=actor, verb="workflow.kpi_inputs_changed", target=workflow, data={"changes": changes})
    return inputs


@transaction.atomic
def endpoint_kpi_inputs_update(
    *, actor: AbstractUser, endpoint: ModelEndpoint, self_hosted: bool, gpu_hourly_price: Decimal | None
) -> EndpointKpiInput:
    """Say whether an endpoint runs on our own GPU and what an hour of it costs. The rollups fold GPU cost into
    their rows, so a change asks the next rollup run to rebuild every day since the endpoint's first call; the
    figures follow within a few minutes, and this request never waits on a running rollup job."""
    _require(actor)
    if self_hosted and gpu_hourly_price is None:
        raise ValidationFailed(
            "A self-hosted endpoint needs its GPU's hourly price.",
            fields={"gpu_hourly_price": ["Enter the hourly price of the GPU this endpoint runs on."]},
        )
    if gpu_hourly_price is not None and gpu_hourly_price < 0:
        raise ValidationFailed("The price cannot be negative.", fields={"gpu_hourly_price": ["Enter 0 or more."]})
    inputs, _ = EndpointKpiInput.objects.select_for_update().get_or_create(endpoint=endpoint)
    before = {"self_hosted": inputs.self_hosted, "gpu_hourly_price": inputs.gpu_hourly_price}
    after = {"self_hosted": self_hosted, "gpu_hourly_price": gpu_hourly_price}
    changes = _changes(before, after)
    if changes:
        inputs.self_hosted, inputs.gpu_hourly_price = self_hosted, gpu_hourly_price
        inputs.save()
        audit_record(actor=actor, verb="model_endpoint.kpi_inputs_changed", target=endpoint, data={"changes": changes})
        _rebuild_from_first_call(endpoint)
    return inputs


def _rebuild_from_first_call(endpoint: ModelEndpoint) -> None:
    """Ask the rollup job to rebuild every day since the endpoint's first rolled-up call. A plain insert: a running
    job (a first backfill can take minutes) never holds this request up, and it takes the request on its next run
    (within AIOS_ROLLUP_INTERVAL_SECONDS, a few minutes)."""
    first = EndpointDayRollup.objects.filter(endpoint=endpoint).order_by("day").values_list("day", flat=True).first()
    if first is None:
        return
    RollupRebuildRequest.objects.create(from_day=first, reason=f"The KPI inputs of endpoint {endpoint.name} changed.")
