"""The sign-in form: Django's, with a clear message while the name or address is locked out."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.forms import AuthenticationForm

from apps.accounts.backends import client_ip
from apps.accounts.services import login_lockout_remaining


class ThrottledLoginForm(AuthenticationForm):
    """Throttling itself happens in the authentication backend; this form explains it to the person."""

    error_messages = {
        **AuthenticationForm.error_messages,
        "invalid_login": "That username and password do not match. Check them and try again.",
        "locked_out": "Too many failed sign-in attempts. Try again in %(minutes)s minute(s).",
    }

    def clean(self) -> dict[str, Any]:
        try:
            return super().clean()
        except forms.ValidationError:
            remaining = login_lockout_remaining(
                username=self.cleaned_data.get("username") or "", client_ip=client_ip(self.request)
            )
            if remaining:
                raise forms.ValidationError(
                    self.error_messages["locked_out"],
                    code="locked_out",
                    params={"minutes": max(1, round(remaining / 60))},
                ) from None
            raise
