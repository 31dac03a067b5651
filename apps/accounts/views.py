"""Sign-in, sign-out, the home page, and one's API token."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from apps.accounts.backends import client_ip
from apps.accounts.forms import ThrottledLoginForm
from apps.accounts.roles import ROLE_DESCRIPTIONS
from apps.accounts.selectors import api_token_created_at, user_roles, user_teams
from apps.accounts.services import api_token_issue, api_token_revoke, login_success_record


class LoginView(auth_views.LoginView):
    """Django's login view with throttling and an audited sign-in."""

    template_name = "accounts/login.html"
    authentication_form = ThrottledLoginForm
    redirect_authenticated_user = True

    def form_valid(self, form: AuthenticationForm) -> HttpResponse:
        response = super().form_valid(form)
        login_success_record(user=form.get_user(), client_ip=client_ip(self.request))
        return response


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
    """One's API token for the REST API and the MCP endpoint: create, rotate (the old one stops working) or
    revoke it. The key is shown once, on the page that answers the create or rotate."""
    if request.method == "POST":
        action = request.POST.get("action")
        if action == "issue":
            key = api_token_issue(user=request.user)  # type: ignore[arg-type]
            response = render(
                request, "accounts/api_token.html", {"key": key, "created_at": api_token_created_at(request.user)}
            )
            response["Cache-Control"] = "no-store"  # the key must not stay in a browser's or a proxy's cache
            return response
        if action == "revoke":
            if api_token_revoke(user=request.user):  # type: ignore[arg-type]
                messages.success(request, "Your API token was revoked: whatever used it is refused from now on.")
            return redirect("accounts:api-token")
        messages.error(request, "Choose to create, replace or revoke the token.")
    return render(request, "accounts/api_token.html", {"created_at": api_token_created_at(request.user)})
