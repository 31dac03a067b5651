"""Reads about users and their roles."""

from __future__ import annotations

from datetime import datetime

from django.contrib.auth.models import AbstractUser, AnonymousUser
from rest_framework.authtoken.models import Token

from apps.accounts.models import Team
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


def api_token_created_at(user: AbstractUser | AnonymousUser) -> datetime | None:
    """When `user`'s API token was made, or None without one (its key is shown only when it is made)."""
    if not user.is_authenticated:
        return None
    return Token.objects.filter(user_id=user.pk).values_list("created", flat=True).first()
