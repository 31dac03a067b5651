"""Admin pages for model endpoints: list with live probe results, create, edit, probe, enable/disable."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from apps.core.exceptions import ApplicationError
from apps.inference.forms import ModelEndpointForm
from apps.inference.models import ModelEndpoint
from apps.inference.services import endpoint_probe, endpoint_save, endpoint_set_enabled

MANAGE = "inference.change_modelendpoint"


def _require_manager(request: HttpRequest) -> None:
    if not request.user.has_perm(MANAGE):
        raise PermissionDenied("Only admins manage model endpoints.")


VIEW = "inference.view_modelendpoint"


@login_required
def endpoint_list(request: HttpRequest) -> HttpResponse:
    """Every endpoint with what its last probe found: for admins to manage, for analysts to know the names
    their steps may use (read-only)."""
    if not request.user.has_perm(VIEW):
        raise PermissionDenied("You may not see the model endpoints.")
    return render(
        request,
        "inference/endpoint_list.html",
        {"endpoints": ModelEndpoint.objects.all(), "can_manage": request.user.has_perm(MANAGE)},
    )


@login_required
def endpoint_edit(request: HttpRequest, endpoint_id: int | None = None) -> HttpResponse:
    """Create (no id) or change an endpoint; a saved endpoint is probed right away."""
    _require_manager(request)
    endpoint = get_object_or_404(ModelEndpoint, pk=endpoint_id) if endpoint_id else ModelEndpoint()
    form = ModelEndpointForm(request.POST or None, instance=endpoint)
    if request.method == "POST" and form.is_valid():
        saved = endpoint_save(actor=request.user, endpoint=form.save(commit=False), token=form.token_change())  # type: ignore[arg-type]
        endpoint_probe(actor=request.user, endpoint=saved)  # type: ignore[arg-type]
        if saved.probe_error:
            messages.warning(request, f'Saved "{saved.name}", but the server did not answer: {saved.probe_error}')
        else:
            messages.success(request, f'Saved "{saved.name}": it serves {saved.model_label}.')
        return redirect("inference:endpoints")
    status = 400 if request.method == "POST" else 200
    return render(request, "inference/endpoint_form.html", {"form": form, "endpoint": endpoint}, status=status)


@login_required
@require_POST
def endpoint_probe_view(request: HttpRequest, endpoint_id: int) -> HttpResponse:
    _require_manager(request)
    endpoint = endpoint_probe(actor=request.user, endpoint=get_object_or_404(ModelEndpoint, pk=endpoint_id))  # type: ignore[arg-type]
    if endpoint.probe_error:
        messages.error(request, f'"{endpoint.name}" did not answer: {endpoint.probe_error}')
    else:
        messages.success(request, f'"{endpoint.name}" serves {endpoint.model_label}.')
    return redirect("inference:endpoints")


@login_required
@require_POST
def endpoint_toggle_view(request: HttpRequest, endpoint_id: int) -> HttpResponse:
    _require_manager(request)
    endpoint = get_object_or_404(ModelEndpoint, pk=endpoint_id)
    try:
        endpoint_set_enabled(actor=request.user, endpoint=endpoint, enabled=not endpoint.enabled)  # type: ignore[arg-type]
    except ApplicationError as refusal:
        messages.error(request, refusal.message)
    else:
        messages.success(request, f'"{endpoint.name}" is {"enabled" if endpoint.enabled else "disabled"}.')
    return redirect("inference:endpoints")
