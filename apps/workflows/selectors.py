"""Permission-aware reads of workflows."""

from __future__ import annotations

from django.contrib.auth.models import AbstractUser, AnonymousUser
from django.db.models import Prefetch, QuerySet
from django.http import Http404

from apps.core.permissions import has_object_perm, restrict
from apps.workflows.models import Workflow, WorkflowVersion

AnyUser = AbstractUser | AnonymousUser


def workflow_list_for_user(user: AnyUser) -> QuerySet[Workflow]:
    """The workflows `user` may view, by name, each with `published_versions` (newest first) prefetched."""
    published = WorkflowVersion.objects.filter(state=WorkflowVersion.State.PUBLISHED).order_by("-number")
    return (
        restrict(Workflow.objects.select_related("team", "owner"), user, "workflows.view_workflow")
        .prefetch_related(Prefetch("versions", queryset=published, to_attr="published_versions"))
        .order_by("name")
    )


def workflow_get_for_user(user: AnyUser, *, slug: str) -> Workflow:
    """The workflow named by `slug` if `user` may view it; Http404 otherwise (existence is not revealed)."""
    workflow = workflow_list_for_user(user).filter(slug=slug).first()
    if workflow is None:
        raise Http404("No such workflow.")
    return workflow


def workflow_can_run(user: AnyUser, workflow: Workflow) -> bool:
    """Whether `user` may start runs of `workflow`."""
    return has_object_perm(user, "workflows.run_workflow", workflow)


def workflow_can_edit(user: AnyUser, workflow: Workflow) -> bool:
    """Whether `user` may change `workflow` (its owner, admins): also what trying other step settings in a
    what-if run needs, since it runs the workflow with a changed configuration."""
    return has_object_perm(user, "workflows.change_workflow", workflow)


def workflow_version_published_latest(workflow: Workflow) -> WorkflowVersion | None:
    """The newest published version, which new runs use; None before the first publish."""
    prefetched = getattr(workflow, "published_versions", None)
    if prefetched is not None:
        return prefetched[0] if prefetched else None
    return workflow.versions.filter(state=WorkflowVersion.State.PUBLISHED).order_by("-number").first()
