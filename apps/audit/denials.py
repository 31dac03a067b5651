"""Denied requests in the audit chain: who was refused what, on pages, htmx fragments, the API and sockets.

What is recorded, and why not more:
- every 403 to a signed-in user (pages, htmx, API, a CSRF failure) and every WebSocket refusal: a person
  trying what they may not do is what an auditor looks for, and it is bounded by that person's own traffic;
- 404s of signed-in users on a route that exists (an object id that is not there, or one they may not see:
  the two answers are the same on purpose) are sampled: the first AIOS_AUDIT_NOT_FOUND_PER_HOUR per user
  and hour. A probe for ids shows in the first few; a flood of them adds nothing but rows to an append-only
  table;
- nothing for anonymous clients: whoever is not signed in could otherwise write into the chain at the rate
  of their requests. They are refused before any object is read, and the log line is enough.

Only the route's name, the method, the status and the path (never the query string or body) are recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from apps.audit.services import audit_record

logger = logging.getLogger(__name__)


def _not_found_sampled(user_pk: int) -> bool:
    """True for the first AIOS_AUDIT_NOT_FOUND_PER_HOUR 404s of this user in the current clock hour."""
    limit = settings.AIOS_AUDIT_NOT_FOUND_PER_HOUR
    if limit <= 0:
        return False
    key = f"aios:audit:404:{user_pk}:{timezone.now():%Y%m%d%H}"
    try:
        cache.add(key, 0, timeout=3700)
        return int(cache.incr(key)) <= limit
    except Exception:  # the cache is an optimisation here: without it, sample nothing rather than fail
        logger.warning("404 sampling unavailable (cache error)", exc_info=True)
        return False


def audit_denial(*, user: Any, route: str, status: int, method: str, path: str, channel: str) -> None:
    """Record one refusal of `user` (`request.denied`, or `request.not_found` for a sampled 404) in the
    user's stream, in its own transaction. Never raises: a refusal is answered whether or not it could be
    recorded (the failure is logged)."""
    if user is None or not getattr(user, "is_authenticated", False):
        return
    if status == 404 and not _not_found_sampled(user.pk):
        return
    try:
        audit_record(
            actor=user,
            verb="request.not_found" if status == 404 else "request.denied",
            target=user,
            data={"route": route[:200], "status": status, "method": method[:16], "path": path[:200], "via": channel},
        )
    except Exception:
        logger.exception("could not audit a denied request (%s %s -> %s)", method, route, status)


class DeniedRequestAuditMiddleware:
    """Audits 403s (and sampled 404s) answered to signed-in users; see the module docstring."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        status = response.status_code
        if status == 403 or status == 404:
            match = getattr(request, "resolver_match", None)
            if status == 404 and match is None:
                return response  # no such route: a typo or a scanner, not a refused object
            user = getattr(request, "user", None)
            if user is None or not user.is_authenticated:
                if status == 403:
                    logger.info("denied %s %s to an anonymous client (%s)", request.method, request.path, status)
                return response
            route = (match.view_name if match is not None else "") or request.path
            channel = (
                "api" if request.path.startswith("/api/") else ("htmx" if request.headers.get("HX-Request") else "page")
            )
            audit_denial(
                user=user, route=route, status=status, method=request.method or "", path=request.path, channel=channel
            )
        return response


def audit_socket_denial(scope: dict[str, Any], *, route: str, code: int) -> None:
    """Record a WebSocket refusal (close code 4403 or 4404) of the scope's user as `request.denied`."""
    audit_denial(
        user=scope.get("user"),
        route=route,
        status=403 if code == 4403 else 404,
        method="WEBSOCKET",
        path=str(scope.get("path", "")),
        channel="websocket",
    )
