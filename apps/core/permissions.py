"""The one helper through which every user-facing read applies permissions (django-guardian).

Model-level permissions granted to a role (a group) count for every object of that model; object
permissions count for that object. Anything else is invisible: callers turn "not in the queryset" into 404.
"""

from __future__ import annotations

from typing import TypeVar

from django.contrib.auth.models import AbstractUser, AnonymousUser
from django.db.models import Model, QuerySet
from guardian.shortcuts import get_objects_for_user

M = TypeVar("M", bound=Model)


def restrict(queryset: QuerySet[M], user: AbstractUser | AnonymousUser, perm: str) -> QuerySet[M]:
    """`queryset` narrowed to the objects on which `user` holds `perm` (e.g. "workflows.view_workflow")."""
    if not user.is_authenticated or not user.is_active:
        return queryset.none()
    # guardian only honours model-level (role) permissions when with_superuser is on.
    return get_objects_for_user(user, perm, klass=queryset, accept_global_perms=True, with_superuser=True)


def has_object_perm(user: AbstractUser | AnonymousUser, perm: str, obj: Model) -> bool:
    """Whether `user` holds `perm` on `obj`, through a role (model-level) or on the object itself."""
    if not user.is_authenticated or not user.is_active:
        return False
    return bool(user.has_perm(perm) or user.has_perm(perm, obj))
