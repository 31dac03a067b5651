"""Who may do what with connections: the rules every service, selector, view and step asks. Reads only.

- manage (change settings and secrets, enable, disable, delete, test): admins (the admin role or superuser),
  and whoever holds `connectors.manage_connection` on the connection (directly or through a group);
- create: admins;
- use (name it in a step, at publish): admins, and whoever holds `connectors.use_connection` on it (the owning
  team's group holds it from creation);
- use at RUN time is decided for the run's workflow, not a person: the workflow's team's group holds the use
  permission, or, for a workflow without a team, its owner may use it as above.
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractUser, AnonymousUser, Group
from guardian.shortcuts import get_perms

from apps.accounts.models import Team, User
from apps.accounts.roles import ADMIN, user_roles
from apps.connectors.models import Connection

USE = "connectors.use_connection"
MANAGE = "connectors.manage_connection"

AnyUser = AbstractUser | AnonymousUser


def user_is_admin(user: AnyUser) -> bool:
    if not user.is_authenticated or not user.is_active:
        return False
    return bool(user.is_superuser or ADMIN in user_roles(user))


def user_creates_connections(user: AnyUser) -> bool:
    """Admins create connections (for any team)."""
    return user_is_admin(user)


def user_manages_connection(user: AnyUser, connection: Connection) -> bool:
    """Whether `user` may change, test, enable, disable or delete `connection`."""
    if not user.is_authenticated or not user.is_active:
        return False
    return user_is_admin(user) or user.has_perm(MANAGE, connection)


def user_uses_connection(user: AnyUser, connection: Connection) -> bool:
    """Whether `user` may name `connection` in a step (and so read its non-secret settings)."""
    if not user.is_authenticated or not user.is_active:
        return False
    return user_is_admin(user) or user.has_perm(USE, connection)


def workflow_uses_connection(workflow_id: int | None, connection: Connection) -> bool:
    """Whether runs of workflow `workflow_id` may use `connection` (see the module docstring). The workflows
    app sits above this one: the workflow is reached through its reverse relations, never imported."""
    if workflow_id is None:
        return False
    team = Team.objects.filter(workflows=workflow_id).select_related("group").first()
    if team is not None:
        group: Group = team.group
        return "use_connection" in get_perms(group, connection)
    owner = User.objects.filter(owned_workflows=workflow_id).first()
    return owner is not None and user_uses_connection(owner, connection)
