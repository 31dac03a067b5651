"""The sign-in form, with throttling."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpRequest

from apps.accounts.services import login_failure_record, login_lockout_remaining


def client_ip(request: HttpRequest | None) -> str:
    """The address the request came from (the direct peer; no proxy headers are trusted)."""
    if request is None:
        return "unknown"
    return str(request.META.get("REMOTE_ADDR") or "unknown")


class ThrottledLoginForm(AuthenticationForm):
    """Django's sign-in form that refuses to check passwords while the name or address is locked out."""

    error_messages = {
        **AuthenticationForm.error_messages,
        "invalid_login": "That username and password do not match. Check them and try again.",
        "locked_out": "Too many failed sign-in attempts. Try again in %(minutes)s minute(s).",
    }

    def clean(self) -> dict[str, Any]:
        username = self.cleaned_data.get("username") or ""
        ip = client_ip(self.request)
        remaining = login_lockout_remaining(username=username, client_ip=ip)
        if remaining:
            raise forms.ValidationError(
                self.error_messages["locked_out"],
                code="locked_out",
                params={"minutes": max(1, round(remaining / 60))},
            )
        try:
            return super().clean()
        except forms.ValidationError as error:
            if error.code == "invalid_login":
                login_failure_record(username=username, client_ip=ip)
            raise
