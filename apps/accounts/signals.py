"""Receivers that turn sign-in signals (Django's failures, django-axes' lockouts) into audit events through the
services; connected in AccountsConfig.ready."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from apps.accounts.backends import PASSWORD_CHECKED
from apps.accounts.services import login_failure_record, login_lockout_record
from apps.accounts.throttling import normalised_username


def on_login_failed(
    sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **kwargs: Any
) -> None:
    """A password that did not match (any door). Refusals that checked no password are not failures."""
    if request is not None and getattr(request, PASSWORD_CHECKED, False):
        login_failure_record(username=normalised_username(request, credentials), request=request)


def on_locked_out(sender: Any, request: HttpRequest, username: str | None = None, **kwargs: Any) -> None:
    """django-axes refused or just locked a (username, address) pair."""
    login_lockout_record(username=username or "", request=request)
