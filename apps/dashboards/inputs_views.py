"""The KPI inputs pages: what the figures assume (reviewer rate, baselines, realisation, build costs, GPU prices),
readable by everyone who reads dashboards and changed by managers and admins, every change audited."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from apps.core.exceptions import ValidationFailed
from apps.dashboards.inputs_forms import EndpointInputsForm, RatesForm, WorkflowInputsForm
from apps.dashboards.models import EndpointKpiInput, WorkflowKpiInput
from apps.dashboards.selectors import (
    can_change_kpi_inputs,
    can_view_dashboards,
    dashboard_endpoints_for_user,
    dashboard_workflows_for_user,
    kpi_settings_get,
)
from apps.dashboards.services import endpoint_kpi_inputs_update, kpi_settings_update, workflow_kpi_inputs_update
from apps.inference.models import ModelEndpoint
from apps.workflows.models import Workflow


def _require_reader(request: HttpRequest) -> None:
    if not can_view_dashboards(request.user):
        raise PermissionDenied("You may not read the KPI dashboards.")


def _require_changer(request: HttpRequest) -> None:
    if not can_change_kpi_inputs(request.user):
        raise PermissionDenied("Only managers and admins change the KPI inputs.")


def _apply_refusal(form: Any, refusal: ValidationFailed) -> None:
    for name, problems in refusal.fields.items():
        for problem in problems:
            form.add_error(name if name in form.fields else None, problem)


def _inputs_page(request: HttpRequest, rates_form: RatesForm | None = None, *, status: int = 200) -> HttpResponse:
    settings_row = kpi_settings_get()
    workflows = list(dashboard_workflows_for_user(request.user))
    workflow_inputs = {row.workflow_id: row for row in WorkflowKpiInput.objects.filter(workflow__in=workflows)}
    endpoints = list(dashboard_endpoints_for_user(request.user))
    endpoint_inputs = {row.endpoint_id: row for row in EndpointKpiInput.objects.filter(endpoint__in=endpoints)}
    context = {
        "settings_row": settings_row,
        "can_change": can_change_kpi_inputs(request.user),
        "rates_form": rates_form
        or RatesForm(
            initial={"reviewer_hourly_rate": settings_row.reviewer_hourly_rate, "currency": settings_row.currency}
        ),
        "workflows": [(workflow, workflow_inputs.get(workflow.pk)) for workflow in workflows],
        "endpoints": [(endpoint, endpoint_inputs.get(endpoint.pk)) for endpoint in endpoints],
    }
    return render(request, "dashboards/inputs.html", context, status=status)


@login_required
def inputs(request: HttpRequest) -> HttpResponse:
    """Every KPI input in one place, with links to change them for those who may."""
    _require_reader(request)
    return _inputs_page(request)


@login_required
@require_POST
def inputs_rates(request: HttpRequest) -> HttpResponse:
    """Change the reviewers' loaded hourly rate and the currency."""
    _require_reader(request)
    _require_changer(request)
    form = RatesForm(request.POST)
    if form.is_valid():
        try:
            kpi_settings_update(
                actor=request.user,  # type: ignore[arg-type]
                reviewer_hourly_rate=form.cleaned_data["reviewer_hourly_rate"],
                currency=form.cleaned_data["currency"],
            )
        except ValidationFailed as refusal:
            _apply_refusal(form, refusal)
        else:
            messages.success(request, "Saved the reviewer rate.")
            return redirect("dashboards:inputs")
    return _inputs_page(request, form, status=400)


@login_required
def inputs_workflow(request: HttpRequest, slug: str) -> HttpResponse:
    """Change one workflow's baseline minutes per case, realisation factor and build cost."""
    _require_reader(request)
    workflow: Workflow | None = dashboard_workflows_for_user(request.user).filter(slug=slug).first()
    if workflow is None:
        raise Http404("No such workflow.")
    _require_changer(request)
    current = WorkflowKpiInput.objects.filter(workflow=workflow).first()
    initial = {
        "baseline_minutes_per_case": workflow.baseline_minutes_per_case,
        "realisation_percent": current.realisation_percent if current else Decimal(100),
        "build_cost": current.build_cost if current else None,
    }
    form = WorkflowInputsForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            workflow_kpi_inputs_update(actor=request.user, workflow=workflow, **form.cleaned_data)  # type: ignore[arg-type]
        except ValidationFailed as refusal:
            _apply_refusal(form, refusal)
        else:
            messages.success(request, f'Saved the KPI inputs of "{workflow.name}".')
            return redirect("dashboards:inputs")
    status = 400 if request.method == "POST" else 200
    return render(request, "dashboards/inputs_workflow.html", {"form": form, "workflow": workflow}, status=status)


@login_required
def inputs_endpoint(request: HttpRequest, name: str) -> HttpResponse:
    """Change whether a model endpoint is self-hosted, and its GPU's hourly price."""
    _require_reader(request)
    endpoint: ModelEndpoint | None = dashboard_endpoints_for_user(request.user).filter(name=name).first()
    if endpoint is None:
        raise Http404("No such endpoint.")
    _require_changer(request)
    current = EndpointKpiInput.objects.filter(endpoint=endpoint).first()
    initial = {
        "self_hosted": current.self_hosted if current else False,
        "gpu_hourly_price": current.gpu_hourly_price if current else None,
    }
    form = EndpointInputsForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            endpoint_kpi_inputs_update(actor=request.user, endpoint=endpoint, **form.cleaned_data)  # type: ignore[arg-type]
        except ValidationFailed as refusal:
            _apply_refusal(form, refusal)
        else:
            messages.success(
                request, f'Saved the KPI inputs of "{endpoint.name}". The cost figures update within a few minutes.'
            )
            return redirect("dashboards:inputs")
    status = 400 if request.method == "POST" else 200
    return render(request, "dashboards/inputs_endpoint.html", {"form": form, "endpoint": endpoint}, status=status)
