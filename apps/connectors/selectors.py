"""Permission-aware reads of connections.

Admins see every connection; others see the connections they may use (their teams' connections) or manage.
A connection someone may not see is a 404 to them, never a 403 that would confirm it exists.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Q, QuerySet
from django.http import Http404

from apps.accounts.models import Team, User
from apps.audit.models import AuditEvent
from apps.audit.selectors import audit_event_list_for_target
from apps.connectors.kinds import KIND_LABELS, KINDS
from apps.connectors.models import Connection
from apps.connectors.rules import MANAGE, USE, AnyUser, user_is_admin, user_uses_connection, workflow_uses_connection
from apps.core.permissions import restrict


def connections_usable_by(user: AnyUser, kind: str | None = None) -> QuerySet[Connection]:
    """The connections `user` may name in steps (admins: all), optionally of one `kind`; enabled or not."""
    if not user.is_authenticated or not user.is_active:
        return Connection.objects.none()
    queryset = Connection.objects.all() if user_is_admin(user) else restrict(Connection.objects.all(), user, USE)
    if kind:
        queryset = queryset.filter(kind=kind)
    return queryset.order_by("name")


def connection_list_for_user(
    user: AnyUser, *, team: str | None = None, kind: str | None = None
) -> QuerySet[Connection]:
    """The connections `user` may see: all for admins; those she may use or manage for others. Filtered by team
    slug and kind when given."""
    if not user.is_authenticated or not user.is_active:
        return Connection.objects.none()
    if user_is_admin(user):
        queryset = Connection.objects.all()
    else:
        usable = restrict(Connection.objects.all(), user, USE).values("pk")
        managed = restrict(Connection.objects.all(), user, MANAGE).values("pk")
        queryset = Connection.objects.filter(Q(pk__in=usable) | Q(pk__in=managed))
    if team:
        queryset = queryset.filter(team__slug=team)
    if kind:
        queryset = queryset.filter(kind=kind)
    return queryset.select_related("team").order_by("name", "pk")


def connection_get_for_user(user: AnyUser, name: str) -> Connection:
    """The connection `name` if `user` may see it; Http404 otherwise (whether or not it exists)."""
    connection = connection_list_for_user(user).filter(name=name).first()
    if connection is None:
        raise Http404("No such connection.")
    return connection


def team_get_for_user(user: AnyUser, slug: str) -> Team:
    """A team whose connections page `user` may open: admins any team, others their own teams; else 404."""
    team = Team.objects.filter(slug=slug).first()
    if team is None or not user.is_authenticated:
        raise Http404("No such team.")
    if user_is_admin(user) or user.groups.filter(pk=team.group_id).exists():
        return team
    raise Http404("No such team.")


def teams_for_filter(user: AnyUser) -> list[Team]:
    """The teams the list page offers as a filter: every team for admins, else the person's teams."""
    if not user.is_authenticated:
        return []
    if user_is_admin(user):
        return list(Team.objects.order_by("name"))
    return list(Team.objects.filter(group__user__pk=user.pk).order_by("name"))


def connection_use_problem(user: User, name: str, *, kind: str) -> str | None:
    """Why `user` may not name connection `name` (of `kind`) in a step, or None when she may. Called when a
    version is published; the step checks again for the run's workflow at run time."""
    connection = Connection.objects.filter(name=name).first()
    if connection is None or not (user_uses_connection(user, connection) or user_is_admin(user)):
        if connection is None:
            return f'there is no connection "{name}"'
        return f'the connection "{name}" is not one you may use'
    if kind and connection.kind != kind:
        wanted = KIND_LABELS.get(kind, kind)
        return f'the connection "{name}" is a {KIND_LABELS[connection.kind]} connection, not {wanted}'
    if not connection.enabled:
        return f'the connection "{name}" is disabled'
    return None


def connection_workflow_problem(name: str, *, kind: str, workflow_id: int) -> str | None:
    """Why runs of workflow `workflow_id` could not use connection `name` (the run-time rule), or None."""
    connection = Connection.objects.filter(name=name).first()
    if connection is None or connection.kind != kind:
        return None  # the person's check names a missing connection or the wrong kind
    if not workflow_uses_connection(workflow_id, connection):
        team = connection.team.name if connection.team_id else "another team"
        return f'the connection "{name}" belongs to {team} and is not shared with this workflow\'s team'
    return None


def connection_choices_for(user: Any) -> dict[str, list[tuple[str, str]]]:
    """The builder's options for steps that name a connection, per widget ("connection-http", ...): the
    connections `user` may use, enabled ones only. An HTTP request may also use none."""
    choices: dict[str, list[tuple[str, str]]] = {f"connection-{kind}": [] for kind in KINDS}
    choices["connection-http"].append(("", "No connection"))
    if user is None:
        return choices
    for name, label, kind in connections_usable_by(user).filter(enabled=True).values_list("name", "label", "kind"):
        choices[f"connection-{kind}"].append((name, f"{label} ({name})"))
    return choices


def connection_history(connection: Connection, *, limit: int = 50) -> list[AuditEvent]:
    """The connection's audit events, newest first: what changed, who tested it, which secrets were replaced
    (their names only)."""
    events = audit_event_list_for_target(target_type="connectors.connection", target_id=str(connection.pk))
    return list(events.order_by("-created_at", "-stream_seq")[:limit])
