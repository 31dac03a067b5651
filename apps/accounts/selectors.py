"""Reads about users and their roles."""

from __future__ import annotations

from django.contrib.auth.models import AbstractUser, AnonymousUser
from django.db.models import QuerySet

from apps.accounts.models import ApiToken, Team
from apps.accounts.roles import ROLES


def user_roles(user: AbstractUser | AnonymousUser) -> list[str]:
    """The role names `user` holds, in the canonical order; superusers hold the admin role."""
    if not user.is_authenticated:
        return []
    names = set(user.groups.values_list("name", flat=True))
    if user.is_superuser:
        names.add("admin")
    return [role for role in ROLES if role in names]


def user_teams(user: AbstractUser | AnonymousUser) -> list[Team]:
    """The teams `user` belongs to."""
    if not user.is_authenticated:
        return []
    return list(Team.objects.filter(group__user__pk=user.pk).order_by("name"))


def api_token_list_for_user(user: AbstractUser | AnonymousUser) -> QuerySet[ApiToken]:
    """`user`'s own API tokens, newest first, live or not (the page shows which are expired or revoked)."""
    if not user.is_authenticated:
        return ApiToken.objects.none()
    return ApiToken.objects.filter(user_id=user.pk).order_by("-created_at", "-id")


def api_token_get_for_user(user: AbstractUser | AnonymousUser, token_id: int) -> ApiToken | None:
    """One of `user`'s own tokens, or None (another person's token is as unknown as a missing one)."""
    return api_token_list_for_user(user).filter(pk=token_id).first()
