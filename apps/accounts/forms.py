"""The sign-in forms (ours and the admin site's): Django's, behind the per-name slowdown, audited on success.

The (username, address) lock itself is django-axes' (its backend refuses, its middleware answers with
`apps.accounts.throttling.lockout_response`); see apps/accounts/throttling.py for the whole scheme.
"""

from __future__ import annotations

from typing import Any, ClassVar

from django import forms
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm

from apps.accounts.services import API_TOKEN_LIFETIMES, login_success_record
from apps.accounts.throttling import login_slowdown_remaining

SLOWED_MESSAGE = (
    "This account has had many failed sign-in attempts, so each attempt must wait a little. "
    "Try again in %(seconds)s second(s)."
)


class ThrottledLoginForm(AuthenticationForm):
    """The sign-in page's form. `door` names it in the audit trail."""

    door: ClassVar[str] = "form"
    error_messages = {
        **AuthenticationForm.error_messages,
        "invalid_login": "That username and password do not match. Check them and try again.",
        "slowed": SLOWED_MESSAGE,
    }

    def clean(self) -> dict[str, Any]:
        username = self.cleaned_data.get("username") or ""
        if username and self.cleaned_data.get("password"):
            wait = login_slowdown_remaining(username=username, request=self.request)
            if wait:
                raise forms.ValidationError(self.error_messages["slowed"], code="slowed", params={"seconds": wait})
        cleaned = super().clean()
        if self.user_cache is not None:
            login_success_record(user=self.user_cache, request=self.request, door=self.door)
        return cleaned


class ThrottledAdminLoginForm(ThrottledLoginForm, AdminAuthenticationForm):
    """The admin site's login: the same throttling and audit, and Django's staff-only rule."""

    door: ClassVar[str] = "admin"
    error_messages = {
        **AdminAuthenticationForm.error_messages,
        "slowed": SLOWED_MESSAGE,
    }


class ApiTokenCreateForm(forms.Form):
    """A new API token: a name to tell it apart, and how long it lives."""

    name = forms.CharField(
        max_length=100,
        help_text="What uses it, e.g. “Nightly export script”.",
        widget=forms.TextInput(attrs={"autocomplete": "off"}),
    )
    lifetime_days = forms.TypedChoiceField(
        label="Expires after",
        coerce=int,
        initial=30,
        choices=[(days, f"{days} days") for days in API_TOKEN_LIFETIMES],
    )
