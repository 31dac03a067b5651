"""Request id, Content-Security-Policy, database-outage, NUL-character and JSON-depth middleware."""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from collections.abc import Callable

from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse

from apps.core.context import request_id

logger = logging.getLogger(__name__)
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def request_id_for(incoming: str) -> str:
    """The id a request gets: always our own random part, so no client chooses what the audit chain records.

    A well-formed X-Request-ID from the caller (a proxy's or a client's trace id) is kept only as a short hash
    after ours (`<16 hex>.<12 hex of sha256(incoming)>`): whoever holds the original can find its events by
    hashing it, but nothing the client wrote is copied into the append-only chain, and two requests that send
    the same id still get different ids."""
    ours = uuid.uuid4().hex[:16]
    if incoming and _SAFE_REQUEST_ID.match(incoming):
        return f"{ours}.{hashlib.sha256(incoming.encode()).hexdigest()[:12]}"
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """Gives every request an id that audit events carry and the response echoes (see `request_id_for`)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        value = request_id_for(request.headers.get("X-Request-ID", ""))
        request.request_id = value  # type: ignore[attr-defined]
        token = request_id.set(value)
        try:
            response = self.get_response(request)
        finally:
            request_id.reset(token)
        response["X-Request-ID"] = value
        return response


class ContentSecurityPolicyMiddleware:
    """Sends the strict CSP of settings.CONTENT_SECURITY_POLICY (no inline script or style) and the
    Permissions-Policy of settings.PERMISSIONS_POLICY (no camera, microphone, location, payment, USB...) on
    every response; a view that needs a looser policy sets its own header first."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        response.setdefault("Content-Security-Policy", settings.CONTENT_SECURITY_POLICY)
        response.setdefault("Permissions-Policy", settings.PERMISSIONS_POLICY)
        response.setdefault("Reporting-Endpoints", settings.REPORTING_ENDPOINTS)
        return response


class DatabaseUnavailableMiddleware:
    """A database that is restarting or unreachable answers 503 with Retry-After, not a 500 with a stack
    trace: the request did not change anything, and the client may simply try again."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, (OperationalError, InterfaceError)):
            return None
        logger.warning("database unavailable for %s %s: %s", request.method, request.path, exception)
        message = "The database is not reachable right now; nothing was changed. Try again in a moment."
        if request.path.startswith("/api/") or "application/json" in request.headers.get("Accept", ""):
            response: HttpResponse = JsonResponse({"detail": message}, status=503)
        else:
            response = HttpResponse(message, status=503, content_type="text/plain; charset=utf-8")
        response["Retry-After"] = "5"
        return response


class NulCharacterMiddleware:
    """A NUL character in a query string, form field or JSON body answers 400 before any view runs.

    PostgreSQL cannot store NUL in text or jsonb, so such input would otherwise reach the database and fail
    there as a 500; no legitimate text contains it. Uploaded files (multipart file parts) are not looked at:
    a PDF is full of NUL bytes."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if self._has_nul(request):
            message = "The request contains a NUL character, which no field accepts; nothing was changed."
            if request.path.startswith("/api/") or "application/json" in request.headers.get("Accept", ""):
                return JsonResponse({"detail": message}, status=400)
            return HttpResponse(message, status=400, content_type="text/plain; charset=utf-8")
        return self.get_response(request)

    @staticmethod
    def _has_nul(request: HttpRequest) -> bool:
        if "\x00" in request.path or any("\x00" in key or "\x00" in value for key, value in _pairs(request.GET)):
            return True
        content_type = request.content_type or ""
        if content_type == "application/json":
            body = request.body
            return b"\x00" in body or b"\\u0000" in body
        if request.method == "POST" and content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            return any("\x00" in key or "\x00" in value for key, value in _pairs(request.POST))
        return False


# Deeper than any document the product writes (a workflow's lanes nest a few levels); far below the depth at which
# Python's json module, and everything that walks the parsed value, would exhaust the interpreter's stack.
MAX_JSON_DEPTH = 100
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_A_BRACKET = bytes(sorted(set(range(256)) - set(b"[]{}")))


class JsonDepthMiddleware:
    """A JSON body nested deeper than MAX_JSON_DEPTH answers 400 before any parser sees it.

    DRF's JSONParser (and json.loads wherever a view parses a body itself) turns only ValueError into a bad
    request; nesting a few thousand levels deep raises RecursionError instead, which became a 500. Measuring the
    depth without parsing cannot recurse: strings are cut out first (brackets inside them do not count), then the
    brackets are counted."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        content_type = request.content_type or ""
        json_types = ("application/json", "application/csp-report")
        if (content_type in json_types or content_type.endswith("+json")) and _json_depth(
            request.body
        ) > MAX_JSON_DEPTH:
            message = f"The JSON body is nested deeper than {MAX_JSON_DEPTH} levels; nothing was changed."
            return JsonResponse({"detail": message}, status=400)
        return self.get_response(request)


def _json_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects in `body`, read as JSON text (0 for a scalar), counted up to one
    past MAX_JSON_DEPTH."""
    brackets = _JSON_STRING.sub(b"", body).translate(None, delete=_NOT_A_BRACKET)
    depth = deepest = 0
    for bracket in brackets:
        if bracket in b"[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_JSON_DEPTH:
                break
        else:
            depth -= 1
    return deepest


def _pairs(query: object) -> list[tuple[str, str]]:
    lists = getattr(query, "lists", None)
    if lists is None:
        return []
    return [(key, value) for key, values in lists() for value in values if isinstance(value, str)]
