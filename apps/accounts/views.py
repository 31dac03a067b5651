"""Sign-in, sign-out, the home page, and one's API token."""

from __future__ import annotations

from typing import Any

import requests
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.exceptions import SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse_lazy
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

from apps.accounts.forms import ApiTokenCreateForm, ThrottledLoginForm
from apps.accounts.oidc import NO_ROLE_MARK, oidc_provider_name
from apps.accounts.roles import ROLE_DESCRIPTIONS
from apps.accounts.selectors import api_token_get_for_user, api_token_list_for_user, user_roles, user_teams
from apps.accounts.services import (
    api_token_issue,
    api_token_revoke,
    login_success_record,
    oidc_failure_record,
    password_change_record,
)
from apps.accounts.throttling import lockout_minutes, normalised_username
from apps.core.exceptions import ApplicationError

LOCKED_MESSAGE = (
    "Too many failed sign-in attempts for this account from your network. Try again in %(minutes)s minute(s); "
    "sign-in from other places is not affected."
)


def lockout_response(
    request: HttpRequest, original_response: HttpResponse | None = None, credentials: dict[str, Any] | None = None
) -> HttpResponse:
    """django-axes' AXES_LOCKOUT_CALLABLE: 429 with a reason and Retry-After. The API gets JSON; the sign-in page and
    the admin's login get the sign-in page again with the message (and the name kept)."""
    username = normalised_username(request, credentials)
    minutes = lockout_minutes(request, username)
    message = LOCKED_MESSAGE % {"minutes": minutes}
    if request.path.startswith("/api/"):
        response: HttpResponse = JsonResponse({"detail": message}, status=429)
    else:
        form = ThrottledLoginForm(request, initial={"username": (credentials or {}).get("username", "")})
        context = {
            "form": form,
            "locked_message": message,
            "next": request.POST.get("next", ""),
            "oidc": oidc_provider_name(),
            "password_login": True,
        }
        response = render(request, "accounts/login.html", context, status=429)
    response["Retry-After"] = str(minutes * 60)
    return response


class LoginView(auth_views.LoginView):
    """Django's login view with throttling and an audited sign-in (both in the form), and the single sign-on button
    when an OpenID Connect provider is configured."""

    template_name = "accounts/login.html"
    authentication_form = ThrottledLoginForm
    redirect_authenticated_user = True

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        context["oidc"] = oidc_provider_name()
        # Switched off (AIOS_PASSWORD_LOGIN=false) only where single sign-on can take its place.
        context["password_login"] = settings.AIOS_PASSWORD_LOGIN or not settings.AIOS_OIDC_ENABLED
        return context

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not (settings.AIOS_PASSWORD_LOGIN or not settings.AIOS_OIDC_ENABLED):
            messages.error(request, f"Sign in with {oidc_provider_name()}: passwords are not accepted here.")
            return redirect("accounts:login")
        return super().post(request, *args, **kwargs)


class LogoutView(auth_views.LogoutView):
    """Sign out (POST only, as Django requires)."""


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """What each of the user's roles lets them do, with links to start."""
    roles = user_roles(request.user)
    return render(
        request,
        "accounts/home.html",
        {
            "roles": [(role, ROLE_DESCRIPTIONS[role]) for role in roles],
            "role_names": set(roles),
            "teams": user_teams(request.user),
        },
    )


@login_required
@require_http_methods(["GET", "POST"])
def api_token(request: HttpRequest) -> HttpResponse:
    """One's API tokens for the REST API and the MCP endpoint: the list (name, prefix, dates) and a form to create
    one with a chosen lifetime. A new token is shown once, on the page that answers its creation."""
    form = ApiTokenCreateForm(request.POST or None)
    context: dict[str, Any] = {"form": form}
    if request.method == "POST" and form.is_valid():
        try:
            token, key = api_token_issue(
                user=request.user,  # type: ignore[arg-type]
                name=form.cleaned_data["name"],
                lifetime_days=form.cleaned_data["lifetime_days"],
            )
        except ApplicationError as error:
            form.add_error(None, error.message)
        else:
            context.update(form=ApiTokenCreateForm(), new_token=token, key=key)
    context["tokens"] = api_token_list_for_user(request.user)
    context["now"] = timezone.now()
    response = render(request, "accounts/api_token.html", context, status=400 if form.errors else 200)
    if "key" in context:
        response["Cache-Control"] = "no-store"  # the token must not stay in a browser's or a proxy's cache
    return response


@login_required
@require_POST
def api_token_revoke_view(request: HttpRequest, token_id: int) -> HttpResponse:
    """Revoke one of one's tokens; whatever holds it is refused from the next request on."""
    token = api_token_get_for_user(request.user, token_id)
    if token is None:
        raise Http404("No such token.")
    if api_token_revoke(token=token, actor=request.user):  # type: ignore[arg-type]
        messages.success(
            request, f"The token “{token.name}” ({token.prefix}…) was revoked: whatever used it is refused from now on."
        )
    return redirect("accounts:api-token")


# --- single sign-on (mozilla-django-oidc's views, under our URLs; 404 while single sign-on is not configured) ------


class OidcStartView(OIDCAuthenticationRequestView):
    """Sends the browser to the provider with a fresh state, nonce and PKCE challenge (kept in the session)."""


class OidcCallbackView(OIDCAuthenticationCallbackView):
    """The provider sends the browser back here with a code. A sign-in that fails says why on the sign-in page (and
    in the audit trail); one whose groups give no role gets a page of its own."""

    def get(self, request: HttpRequest) -> HttpResponse:
        try:
            return super().get(request)
        except SuspiciousOperation as error:
            return self._refused(str(error))
        except requests.RequestException as error:
            status = getattr(getattr(error, "response", None), "status_code", None)
            return self._refused(f"the provider could not be reached or refused the code (HTTP {status or 'error'})")

    def login_success(self) -> HttpResponse:
        response = super().login_success()
        login_success_record(user=self.user, request=self.request, door="oidc")
        return response

    def login_failure(self) -> HttpResponse:
        if getattr(self.request, NO_ROLE_MARK, False):
            return render(self.request, "accounts/oidc_no_role.html", {"provider": oidc_provider_name()}, status=403)
        return self._refused("the provider did not confirm the sign-in")

    def _refused(self, reason: str) -> HttpResponse:
        oidc_failure_record(reason=reason, request=self.request)
        messages.error(
            self.request,
            f"Sign-in with {oidc_provider_name()} failed: {reason.rstrip('.')}. Try again, or ask your administrator.",
        )
        return redirect("accounts:login")


def oidc_start(request: HttpRequest) -> HttpResponse:
    """GET: start a single sign-on."""
    if not settings.AIOS_OIDC_ENABLED:
        raise Http404("Single sign-on is not configured.")
    return OidcStartView.as_view()(request)


def oidc_callback(request: HttpRequest) -> HttpResponse:
    """GET: the provider's answer."""
    if not settings.AIOS_OIDC_ENABLED:
        raise Http404("Single sign-on is not configured.")
    return OidcCallbackView.as_view()(request)


# --- password change ---------------------------------------------------------------------------------------------


def _has_password(user: Any) -> bool:
    return bool(user.is_authenticated and user.has_usable_password())


class PasswordChangeView(auth_views.PasswordChangeView):
    """Change one's own password (the old one first). Django keeps this session signed in and, because a session
    remembers a hash of the password it signed in with, every other session of the person ends at its next request.
    People who sign in through the provider have no AIOS password: the page says so and changes nothing."""

    template_name = "accounts/password_change.html"
    success_url = reverse_lazy("accounts:password-change")

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        context["managed_by_provider"] = not _has_password(self.request.user)
        context["provider"] = oidc_provider_name() or "your company's sign-in"
        return context

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not _has_password(request.user):
            return self.render_to_response(self.get_context_data(), status=403)
        return super().post(request, *args, **kwargs)

    def form_valid(self, form: Any) -> HttpResponse:
        response = super().form_valid(form)
        password_change_record(user=form.user)
        messages.success(
            self.request, "Your password was changed. Other devices where you were signed in are signed out."
        )
        return response
