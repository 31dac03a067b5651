"""Sign-in, sign-out and the home page."""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from apps.accounts.backends import client_ip
from apps.accounts.forms import ThrottledLoginForm
from apps.accounts.roles import ROLE_DESCRIPTIONS
from apps.accounts.selectors import user_roles, user_teams
from apps.accounts.services import login_success_record


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
