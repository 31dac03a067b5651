"""Audit of changes to who may do what, wherever they are made.

The admin site, `manage.py shell` and any future screen change users' roles (groups), permissions and
privilege flags through the ORM, not through a service of ours, so these changes are caught where every path
meets: the model signals. Each receiver only works out what changed and hands it to `audit_record`, in the
transaction of the change (a rolled-back change leaves no event).

The actor is the signed-in user of the request being served (the admin site's), read from the request that
django-simple-history's middleware keeps for its own change records; outside a request (a shell, a script,
a migration) it is "system" and the event says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from django.contrib.auth.models import Group, Permission
from django.db.models.signals import m2m_changed, post_save, pre_save
from simple_history.models import HistoricalRecords

from apps.accounts.models import User
from apps.audit.services import audit_record

_suppressed: ContextVar[bool] = ContextVar("aios_privilege_audit_suppressed", default=False)


@contextmanager
def privilege_audit_suppressed() -> Iterator[None]:
    """Quiets the access-change receivers, for `roles_sync` and for services that record one event of their own.

    The roles' permissions are defined in code (ROLE_PERMISSIONS, reviewed in version control) and re-applied
    after every migrate and test flush: recording each re-application would fill the chain with events that
    say nothing a person decided. `user_create`, `team_create` and the single sign-on's role sync record what
    changed themselves, with its reason."""
    token = _suppressed.set(True)
    try:
        yield
    finally:
        _suppressed.reset(token)


# The flags that widen or end what a user may do. A change of any of them is a privilege change.
PRIVILEGE_FIELDS = ("is_active", "is_staff", "is_superuser")


def _actor_and_via() -> tuple[Any, str]:
    request = getattr(HistoricalRecords.context, "request", None)
    if request is None:
        return None, "no request (shell, script or migration)"
    user = getattr(request, "user", None)
    route = getattr(getattr(request, "resolver_match", None), "view_name", None) or request.path
    return (user if user is not None and user.is_authenticated else None), str(route)[:200]


def _privileges(user: User) -> dict[str, bool]:
    return {field: bool(getattr(user, field)) for field in PRIVILEGE_FIELDS}


def user_privileges_remember(sender: type[User], instance: User, raw: bool = False, **kwargs: Any) -> None:
    """pre_save: keep the stored flags on the instance so post_save can tell what changed (one query)."""
    if raw or instance.pk is None:
        instance._aios_privileges_before = None  # type: ignore[attr-defined]
        return
    update_fields = kwargs.get("update_fields")
    if update_fields is not None and not set(update_fields) & set(PRIVILEGE_FIELDS):
        # e.g. last_login on every sign-in: cannot change a privilege, so costs no query.
        instance._aios_privileges_before = _privileges(instance)  # type: ignore[attr-defined]
        return
    stored = User.objects.filter(pk=instance.pk).values(*PRIVILEGE_FIELDS).first()
    instance._aios_privileges_before = (  # type: ignore[attr-defined]
        {field: bool(value) for field, value in stored.items()} if stored else None
    )


def user_privileges_audit(sender: type[User], instance: User, created: bool, raw: bool = False, **kwargs: Any) -> None:
    """post_save: `user.privileges_changed` with before/after when a privilege flag changed. A new user is
    audited here only when created privileged (staff or superuser, e.g. `createsuperuser`); ordinary
    accounts come from `user_create`, which audits them itself."""
    if _suppressed.get():
        return
    if raw:
        return
    before = getattr(instance, "_aios_privileges_before", None)
    after = _privileges(instance)
    if created or before is None:
        if not (after["is_staff"] or after["is_superuser"]):
            return
        before = {field: False for field in PRIVILEGE_FIELDS}
    if before == after:
        return
    actor, via = _actor_and_via()
    audit_record(
        actor=actor,
        verb="user.privileges_changed",
        target=instance,
        data={"before": before, "after": after, "created": bool(created), "via": via},
    )


def _group_names(pks: set[Any]) -> list[str]:
    return sorted(Group.objects.filter(pk__in=pks).values_list("name", flat=True))


def _permission_names(pks: set[Any]) -> list[str]:
    return sorted(
        f"{app}.{codename}"
        for app, codename in Permission.objects.filter(pk__in=pks).values_list("content_type__app_label", "codename")
    )


def _m2m_audit(
    *,
    verb: str,
    owner: Any,
    names: Any,
    current: Any,
    action: str,
    pk_set: set[Any] | None,
    cleared: set[Any] | None,
) -> None:
    if action == "post_add":
        added, removed = names(pk_set or set()), []
    elif action == "post_remove":
        added, removed = [], names(pk_set or set())
    elif action == "post_clear":
        added, removed = [], names(cleared or set())
    else:
        return
    if not added and not removed:
        return
    after = current(owner)
    before = sorted((set(after) - set(added)) | set(removed))
    actor, via = _actor_and_via()
    audit_record(
        actor=actor,
        verb=verb,
        target=owner,
        data={"added": added, "removed": removed, "before": before, "after": after, "via": via},
    )


def user_groups_audit(
    sender: Any, instance: Any, action: str, reverse: bool, pk_set: set[Any] | None, **kwargs: Any
) -> None:
    """m2m_changed on User.groups, from either side (`user.groups.add(g)` or `group.user_set.add(u)`):
    `user.roles_changed` on each user whose groups changed, with the roles before and after."""
    if _suppressed.get():
        return
    _m2m_for_users(
        verb="user.roles_changed",
        instance=instance,
        action=action,
        reverse=reverse,
        pk_set=pk_set,
        names=_group_names,
        current=lambda user: sorted(user.groups.values_list("name", flat=True)),
        attribute="groups",
    )


def user_permissions_audit(
    sender: Any, instance: Any, action: str, reverse: bool, pk_set: set[Any] | None, **kwargs: Any
) -> None:
    """m2m_changed on User.user_permissions, from either side: `user.permissions_changed`."""
    if _suppressed.get():
        return
    _m2m_for_users(
        verb="user.permissions_changed",
        instance=instance,
        action=action,
        reverse=reverse,
        pk_set=pk_set,
        names=_permission_names,
        current=lambda user: _permission_names(set(user.user_permissions.values_list("pk", flat=True))),
        attribute="user_permissions",
    )


def _m2m_for_users(
    *,
    verb: str,
    instance: Any,
    action: str,
    reverse: bool,
    pk_set: set[Any] | None,
    names: Any,
    current: Any,
    attribute: str,
) -> None:
    if action == "pre_clear":
        # What a clear removes is gone by post_clear: remember it now.
        if reverse:
            instance._aios_cleared = set(instance.user_set.values_list("pk", flat=True))
        else:
            instance._aios_cleared = set(getattr(instance, attribute).values_list("pk", flat=True))
        return
    if not action.startswith("post_"):
        return
    if not reverse:
        _m2m_audit(
            verb=verb,
            owner=instance,
            names=names,
            current=current,
            action=action,
            pk_set=pk_set,
            cleared=getattr(instance, "_aios_cleared", None),
        )
        return
    # Reverse side: `instance` is the group (or permission) and pk_set holds users.
    user_pks = (getattr(instance, "_aios_cleared", None) or set()) if action == "post_clear" else (pk_set or set())
    for user in User.objects.filter(pk__in=user_pks).order_by("pk"):
        _m2m_audit(
            verb=verb,
            owner=user,
            names=names,
            current=current,
            action="post_remove" if action == "post_clear" else action,
            pk_set={instance.pk},
            cleared=None,
        )


def group_permissions_audit(
    sender: Any, instance: Any, action: str, reverse: bool, pk_set: set[Any] | None, **kwargs: Any
) -> None:
    """m2m_changed on Group.permissions (what a role may do): `group.permissions_changed` on the group."""
    if _suppressed.get():
        return
    if action == "pre_clear":
        instance._aios_cleared = set(
            (instance.group_set if reverse else instance.permissions).values_list("pk", flat=True)
        )
        return
    if not action.startswith("post_"):
        return
    if not reverse:
        _m2m_audit(
            verb="group.permissions_changed",
            owner=instance,
            names=_permission_names,
            current=lambda group: _permission_names(set(group.permissions.values_list("pk", flat=True))),
            action=action,
            pk_set=pk_set,
            cleared=getattr(instance, "_aios_cleared", None),
        )
        return
    group_pks = (getattr(instance, "_aios_cleared", None) or set()) if action == "post_clear" else (pk_set or set())
    for group in Group.objects.filter(pk__in=group_pks).order_by("pk"):
        _m2m_audit(
            verb="group.permissions_changed",
            owner=group,
            names=_permission_names,
            current=lambda g: _permission_names(set(g.permissions.values_list("pk", flat=True))),
            action="post_remove" if action == "post_clear" else action,
            pk_set={instance.pk},
            cleared=None,
        )


def connect() -> None:
    """Called once from AccountsConfig.ready()."""
    pre_save.connect(user_privileges_remember, sender=User, dispatch_uid="aios-audit-user-privileges-before")
    post_save.connect(user_privileges_audit, sender=User, dispatch_uid="aios-audit-user-privileges")
    m2m_changed.connect(user_groups_audit, sender=User.groups.through, dispatch_uid="aios-audit-user-groups")
    m2m_changed.connect(
        user_permissions_audit, sender=User.user_permissions.through, dispatch_uid="aios-audit-user-permissions"
    )
    m2m_changed.connect(
        group_permissions_audit, sender=Group.permissions.through, dispatch_uid="aios-audit-group-permissions"
    )
