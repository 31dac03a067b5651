from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from simple_history.admin import SimpleHistoryAdmin

from apps.accounts.forms import ThrottledAdminLoginForm
from apps.accounts.models import ApiToken, Team, User
from apps.accounts.services import api_token_revoke

admin.site.register(User, UserAdmin)
# The admin's login goes through the same throttling and sign-in audit as the sign-in page, and its "change
# password" link leads to ours (audited, and telling single sign-on users where their password lives).
admin.site.login_form = ThrottledAdminLoginForm


def _password_change(request: HttpRequest, extra_context: Any = None) -> HttpResponse:
    return redirect("accounts:password-change")


admin.site.password_change = _password_change  # type: ignore[assignment,method-assign]


@admin.register(Team)
class TeamAdmin(SimpleHistoryAdmin):
    list_display = ["name", "slug", "created_at"]
    readonly_fields = ["group", "created_at"]


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Every person's API tokens, to revoke one that leaked. Tokens are made by their owners only; the admin sees
    a token's prefix, never the token (which AIOS does not keep) nor its digest."""

    list_display = ["name", "user", "prefix", "created_at", "expires_at", "last_used_at", "revoked_at"]
    list_filter = ["revoked_at"]
    search_fields = ["name", "prefix", "user__username"]
    fields = ["user", "name", "prefix", "created_at", "expires_at", "last_used_at", "revoked_at"]
    readonly_fields = ["user", "name", "prefix", "created_at", "expires_at", "last_used_at", "revoked_at"]
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a revoked row stays, for the audit trail and its owner's page

    @admin.action(description="Revoke the selected tokens", permissions=["view"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        revoked = sum(api_token_revoke(token=token, actor=request.user) for token in queryset)  # type: ignore[arg-type]
        messages.success(request, f"{revoked} token(s) revoked.")
