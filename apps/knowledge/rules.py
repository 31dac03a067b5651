"""Who may do what with knowledge collections: the rules every service, selector and view asks. Reads only.

People: a collection's owning team's group holds `view_collection` and `use_collection`; `manage_collection`
goes to its creator and to whoever it is granted; admins (the role, or superusers) may do everything; analysts
and admins may create collections for a team they belong to (admins for any team).

Workflows (at run time): a run may search a collection when its workflow's team's group holds
`use_collection` on it, or, for a workflow without a team, when its owner may use it (directly, through her
groups, or as an admin). Workflows live in a higher layer, so they are reached by their reverse relations
(`Team.workflows`, `User.owned_workflows`), never imported.
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractUser, AnonymousUser
from django.db.models import QuerySet
from guardian.shortcuts import get_objects_for_group

from apps.accounts.models import Team, User
from apps.accounts.roles import ADMIN, ANALYST, user_roles
from apps.core.permissions import restrict
from apps.knowledge.models import Collection

VIEW = "knowledge.view_collection"
USE = "knowledge.use_collection"
MANAGE = "knowledge.manage_collection"

AnyUser = AbstractUser | AnonymousUser


def _active(user: AnyUser) -> bool:
    return bool(user.is_authenticated and user.is_active)


def is_knowledge_admin(user: AnyUser) -> bool:
    """Superusers and holders of the admin role: they see, use and manage every collection."""
    return _active(user) and (user.is_superuser or ADMIN in user_roles(user))


def user_may_create_collection(user: AnyUser) -> bool:
    """Analysts and admins create collections (analysts for their own teams)."""
    return is_knowledge_admin(user) or (_active(user) and ANALYST in user_roles(user))


def teams_for_new_collection(user: AnyUser) -> QuerySet[Team]:
    """The teams `user` may own a new collection with: every team for admins, her own teams for analysts."""
    if is_knowledge_admin(user):
        return Team.objects.all()
    if not user_may_create_collection(user):
        return Team.objects.none()
    return Team.objects.filter(group__user=user.pk)


def user_manages_collection(user: AnyUser, collection: Collection) -> bool:
    """Whether `user` may upload and delete documents and change the collection's settings."""
    return is_knowledge_admin(user) or (_active(user) and user.has_perm(MANAGE, collection))


def user_uses_collection(user: AnyUser, collection: Collection) -> bool:
    """Whether `user` may name the collection in steps (and publish them) and search it."""
    return is_knowledge_admin(user) or (_active(user) and user.has_perm(USE, collection))


def collections_usable_by_workflow(queryset: QuerySet[Collection], workflow_id: int | None) -> QuerySet[Collection]:
    """`queryset` narrowed to the collections runs of workflow `workflow_id` may search (module docstring).
    A run without a workflow (none today) may search nothing."""
    if workflow_id is None:
        return queryset.none()
    team = Team.objects.filter(workflows=workflow_id).select_related("group").first()
    if team is not None:
        return get_objects_for_group(team.group, USE, klass=queryset, accept_global_perms=False)
    owner = User.objects.filter(owned_workflows=workflow_id).first()
    if owner is None or not owner.is_active:
        return queryset.none()
    if is_knowledge_admin(owner):
        return queryset
    return restrict(queryset, owner, USE)
