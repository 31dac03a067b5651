"""Views that belong to no bounded context: liveness, readiness and the Prometheus metrics."""

from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from django.views.decorators.http import require_safe
from prometheus_client import CONTENT_TYPE_LATEST

from apps.core.telemetry import health, metrics


@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers HTTP. It asks no dependency on purpose: a load balancer or an orchestrator
    that restarted web processes because the database is away would not bring the database back, only drop
    the requests in flight. Readiness is `/readyz`."""
    return JsonResponse({"status": "ok"})


@require_safe
def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: the database, Redis and the Celery broker, each by name with its latency; 503 when one of
    them does not answer (route traffic elsewhere until it does)."""
    results = health.readiness()
    ready = all(result.ok for result in results)
    body = {"status": "ok" if ready else "unavailable", "checks": {r.name: r.as_dict() for r in results}}
    response = JsonResponse(body, status=200 if ready else 503)
    response["Cache-Control"] = "no-store"
    return response


@require_safe
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus metrics for a scraper with the metrics token, or a signed-in admin; 404 for everyone else, so
    the route's existence is not revealed."""
    if not metrics.may_read_metrics(authorization=request.headers.get("Authorization", ""), user=request.user):
        raise Http404
    response = HttpResponse(metrics.exposition(), content_type=CONTENT_TYPE_LATEST)
    response["Cache-Control"] = "no-store"
    return response


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """The 404 handler: under /api/ an address that matches no route (e.g. a slug with characters a slug cannot
    have) answers JSON like every other API refusal, as the OpenAPI schema documents; pages get the HTML page."""
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "Not found."}, status=404)
    return defaults.page_not_found(request, exception)
