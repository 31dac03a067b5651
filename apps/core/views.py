"""Views that belong to no bounded context: liveness, readiness, the Prometheus metrics and the browsers'
Content-Security-Policy reports."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST, require_safe
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


# --- Content-Security-Policy reports ----------------------------------------------------------------------------

csp_logger = logging.getLogger("aios.csp")
# A report is a few hundred bytes; anything far larger is not one.
CSP_REPORT_MAX_BYTES = 16 * 1024
CSP_REPORT_TYPES = ("application/csp-report", "application/reports+json", "application/json")


class _LogBudget:
    """At most `per_minute` log lines a minute in this process: a page that violates the policy in every
    visitor's browser (or anyone posting reports) must not flood the logs."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._lock = threading.Lock()
        self._window = 0
        self._used = 0

    def take(self) -> bool:
        with self._lock:
            window = int(time.monotonic() // 60)
            if window != self._window:
                self._window, self._used = window, 0
            self._used += 1
            return self._used <= self.per_minute


csp_log_budget = _LogBudget(per_minute=60)


def _printable(value: Any, limit: int) -> str:
    # What a browser (or anyone) put in a report goes into one log line: no control characters, bounded.
    return "".join(char if char.isprintable() else "?" for char in str(value or "")[:limit])


def _without_query(url: Any) -> str:
    # A page's or resource's query string can carry a token; the path is enough to find the page.
    text = _printable(url, 500)
    if text in ("inline", "eval", "self", "data", "blob", "wasm-eval", "trusted-types-policy"):
        return text
    try:
        parts = urlsplit(text)
    except ValueError:
        return "(not a URL)"
    return f"{parts.scheme}://{parts.netloc}{parts.path}" if parts.scheme else parts.path


def _csp_violations(body: Any) -> list[dict[str, Any]]:
    """The violations in a report, in either format: the older `report-uri` one (`{"csp-report": {...}}`) or the
    Reporting API's list of `{"type": "csp-violation", "body": {...}}`."""
    if isinstance(body, dict) and isinstance(body.get("csp-report"), dict):
        report = body["csp-report"]
        return [
            {
                "document": report.get("document-uri"),
                "directive": report.get("effective-directive") or report.get("violated-directive"),
                "blocked": report.get("blocked-uri"),
                "source": report.get("source-file"),
                "line": report.get("line-number"),
            }
        ]
    if isinstance(body, list) and all(isinstance(item, dict) for item in body):
        return [
            {
                "document": item["body"].get("documentURL"),
                "directive": item["body"].get("effectiveDirective"),
                "blocked": item["body"].get("blockedURL"),
                "source": item["body"].get("sourceFile"),
                "line": item["body"].get("lineNumber"),
            }
            for item in body
            if item.get("type") == "csp-violation" and isinstance(item.get("body"), dict)
        ]
    raise ValueError("not a CSP report")


@csrf_exempt  # browsers send reports without a token; a report changes nothing but a log line
@require_POST
def csp_report(request: HttpRequest) -> HttpResponse:
    """Where browsers report what the Content-Security-Policy blocked (the `report-uri` and `report-to`
    directives): each violation is logged (page and resource without their query strings, directive, source
    line), at most 60 lines a minute per process. 204 for a report; a body that is not one gets a 4xx."""
    content_type = request.content_type or ""
    if content_type not in CSP_REPORT_TYPES:
        return JsonResponse({"detail": f"A CSP report is sent as {' or '.join(CSP_REPORT_TYPES[:2])}."}, status=415)
    length = request.headers.get("Content-Length") or "0"
    if not length.isdigit() or int(length) > CSP_REPORT_MAX_BYTES:
        return JsonResponse({"detail": f"A CSP report is at most {CSP_REPORT_MAX_BYTES} bytes."}, status=413)
    try:
        violations = _csp_violations(json.loads(request.read(CSP_REPORT_MAX_BYTES + 1)))
    except (ValueError, UnicodeDecodeError, KeyError, AttributeError, RecursionError):
        return JsonResponse({"detail": "The body is not a CSP report."}, status=400)
    for violation in violations[:10]:
        if not csp_log_budget.take():
            break
        csp_logger.warning(
            "CSP blocked %s (%s) on %s, from %s line %s",
            _without_query(violation["blocked"]),
            _printable(violation["directive"], 100),
            _without_query(violation["document"]),
            _without_query(violation["source"]),
            _printable(violation["line"], 10),
        )
    return HttpResponse(status=204)
