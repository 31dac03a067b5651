"""Sign a session out after AIOS_SESSION_IDLE_MINUTES without a request (the absolute age is SESSION_COOKIE_AGE)."""

from __future__ import annotations

import time
from collections.abc import Callable

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import logout
from django.http import HttpRequest, HttpResponse
from django.shortcuts import resolve_url

LAST_SEEN_KEY = "aios_last_seen"
# The last-seen time is written at most this often: a session save on every request would be a database write per
# page, fragment and poll. So the idle timeout is exact to within this many seconds.
LAST_SEEN_RESOLUTION_SECONDS = 60

# Sent by elements that refresh themselves on a timer (hx-headers on the polling element): such a request is no sign
# of a person at the keyboard, so it does not keep a session alive (a dashboard left open still times out).
BACKGROUND_HEADER = "X-AIOS-Background"

IDLE_MESSAGE = "You were signed out after %(minutes)s minutes without activity. Sign in again to go on."


class SessionIdleTimeoutMiddleware:
    """After AuthenticationMiddleware. A signed-in session idle for too long is logged out (Django's logout: the
    session is flushed, so its cookie is worthless) and the request goes on anonymously: a page redirects to the
    sign-in page, which says why, and the API answers 401/403. An htmx request is answered with HX-Redirect to the
    sign-in page instead, so the whole page goes there rather than a fragment being swapped for it."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated and hasattr(request, "session"):
            now = time.time()
            last_seen = request.session.get(LAST_SEEN_KEY)
            idle = settings.AIOS_SESSION_IDLE_MINUTES * 60
            if isinstance(last_seen, (int, float)) and now - last_seen > idle:
                logout(request)
                messages.info(request, IDLE_MESSAGE % {"minutes": settings.AIOS_SESSION_IDLE_MINUTES})
                if request.headers.get("HX-Request") == "true":
                    response = HttpResponse(status=204)
                    response["HX-Redirect"] = resolve_url(settings.LOGIN_URL)
                    return response
            elif request.headers.get(BACKGROUND_HEADER) != "1" and (
                not isinstance(last_seen, (int, float)) or now - last_seen >= LAST_SEEN_RESOLUTION_SECONDS
            ):
                request.session[LAST_SEEN_KEY] = int(now)
        return self.get_response(request)
