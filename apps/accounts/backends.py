"""Password authentication, behind django-axes' (username, address) lock (`axes.backends.AxesStandaloneBackend`
comes first in AUTHENTICATION_BACKENDS) and feeding the per-name slowdown (apps/accounts/throttling.py)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.backends import ModelBackend
from django.http import HttpRequest

from apps.accounts.models import User
from apps.accounts.throttling import login_failure_count, login_success_remember

# Set on a request whose password this backend checked: a failure signal without it is a refusal that checked
# nothing (a locked pair), which the audit trail records once per lock rather than once per attempt.
PASSWORD_CHECKED = "aios_password_checked"  # noqa: S105 (a request attribute name)


class ThrottledModelBackend(ModelBackend):
    """Django's username/password check, counting failures per name and remembering the addresses a person
    signs in from (the slowdown spares them)."""

    def authenticate(
        self, request: HttpRequest | None, username: str | None = None, password: str | None = None, **kwargs: Any
    ) -> User | None:
        username = username or kwargs.get(User.USERNAME_FIELD) or ""
        if not username or password is None:
            return None
        if request is not None:
            setattr(request, PASSWORD_CHECKED, True)
        user = super().authenticate(request, username=username, password=password, **kwargs)
        if user is None:
            login_failure_count(username=username)
        else:
            login_success_remember(username=username, request=request)
        return user
