"""The four roles, as groups, and the model-level permissions each one holds.

A model-level permission held by a role counts for every object of that model (see
`apps.core.permissions.restrict`); everything else is granted per object.
"""

from __future__ import annotations

from typing import Any

ANALYST = "analyst"
REVIEWER = "reviewer"
MANAGER = "manager"
ADMIN = "admin"
AUDITOR = "auditor"
ROLES = (ANALYST, REVIEWER, MANAGER, ADMIN, AUDITOR)

ROLE_DESCRIPTIONS = {
    ANALYST: "Builds workflows, tests them, publishes versions and watches runs live.",
    REVIEWER: "Works the approval inbox for their team's queues.",
    MANAGER: "Reads every workflow and run, and the KPI dashboards.",
    ADMIN: "Manages users, roles, model endpoints and connectors, and reads the audit trail.",
    AUDITOR: "Reads the audit trail, workflows, runs, evaluations and dashboards, and changes nothing.",
}


# Model-level permissions per role, as "app_label.codename". Object permissions are granted by services.
ROLE_PERMISSIONS: dict[str, list[str]] = {
    ANALYST: [
        "workflows.add_workflow",
        "inference.view_modelendpoint",
        "connectors.view_connection",
        "dashboards.view_dashboards",
    ],
    REVIEWER: [],
    MANAGER: [
        "workflows.view_workflow",
        "workflows.view_workflowversion",
        "runs.view_run",
        "inference.view_modelendpoint",
        "dashboards.view_dashboards",
        "dashboards.change_kpi_inputs",
    ],
    ADMIN: [
        "accounts.view_user",
        "accounts.view_apitoken",  # to find and revoke a leaked token in the admin site
        "accounts.view_team",
        "accounts.add_team",
        "accounts.change_team",
        "audit.view_auditevent",
        "workflows.view_workflow",
        "workflows.view_workflowversion",
        "workflows.change_workflow",
        "workflows.run_workflow",
        "runs.view_run",
        "inference.view_modelendpoint",
        "connectors.view_connection",
        "inference.add_modelendpoint",
        "inference.change_modelendpoint",
        "dashboards.view_dashboards",
        "dashboards.change_kpi_inputs",
    ],
    # Reads what an auditor must see and holds no add/change/delete permission on anything.
    AUDITOR: [
        "audit.view_auditevent",
        "workflows.view_workflow",
        "workflows.view_workflowversion",
        "runs.view_run",
        "inference.view_modelendpoint",
        "connectors.view_connection",
        "dashboards.view_dashboards",
    ],
}


def roles_sync(**kwargs: Any) -> None:
    """Make sure every role group exists and holds exactly its ROLE_PERMISSIONS (idempotent).

    Connected to post_migrate (which runs once per app), so `migrate` and test-database flushes both leave
    the roles equipped; a permission that does not exist yet is simply absent until the post_migrate of
    its app, which runs this again.
    """
    from django.contrib.auth.models import Group, Permission

    from apps.accounts.audit_receivers import privilege_audit_suppressed

    with privilege_audit_suppressed():
        for role, names in ROLE_PERMISSIONS.items():
            group, _ = Group.objects.get_or_create(name=role)
            wanted = []
            for name in names:
                app_label, codename = name.split(".")
                permission = Permission.objects.filter(content_type__app_label=app_label, codename=codename).first()
                if permission is not None:
                    wanted.append(permission)
            group.permissions.set(wanted)


def user_roles(user: Any) -> frozenset[str]:
    """The names of `user`'s groups, read once per user object (one request's worth): every role check of a
    request (may she operate this run, does she review, is she an admin) shares the one query."""
    if not getattr(user, "is_authenticated", False):
        return frozenset()
    cached: frozenset[str] | None = user.__dict__.get("_role_names")
    if cached is None:
        cached = frozenset(user.groups.values_list("name", flat=True))
        user.__dict__["_role_names"] = cached
    return cached
