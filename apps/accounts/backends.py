"""Authentication with sign-in throttling for every door that checks a password (the sign-in page, the
admin's login, the API's token endpoint): they all go through `authenticate()`, so through here."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest

from apps.accounts.models import User
from apps.accounts.services import login_attempt_reserve, login_attempt_succeeded


def client_ip(request: HttpRequest | None) -> str:
    """The address the request came from: the direct peer. No proxy header is trusted, so a client cannot
    pick the address it is throttled under."""
    if request is None:
        return "unknown"
    return str(request.META.get("REMOTE_ADDR") or "unknown")


class ThrottledModelBackend(ModelBackend):
    """Django's username/password backend behind the attempt counter of `login_attempt_reserve`."""

    def authenticate(
        self, request: HttpRequest | None, username: str | None = None, password: str | None = None, **kwargs: Any
    ) -> User | None:
        username = username or kwargs.get(User.USERNAME_FIELD) or ""
        if not username or password is None:
            return None
        ip = client_ip(request)
        if not login_attempt_reserve(username=username, client_ip=ip):
            raise PermissionDenied("locked out")  # stops authenticate() from trying any other backend
        user = super().authenticate(request, username=username, password=password, **kwargs)
        if user is not None:
            login_attempt_succeeded(user=user, client_ip=ip)
        return user
