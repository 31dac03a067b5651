"""Permission-aware reads of runs.

A user sees a run when they may view its workflow, started it themselves, or were granted `view_run` on
it (directly or through a role).
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractUser, AnonymousUser
from django.db.models import Q, QuerySet
from django.http import Http404

from apps.core.permissions import restrict
from apps.runs.models import Run, StepRun
from apps.workflows.selectors import workflow_list_for_user

AnyUser = AbstractUser | AnonymousUser


def run_list_for_user(user: AnyUser) -> QuerySet[Run]:
    """Every run `user` may view, newest first."""
    if not user.is_authenticated:
        return Run.objects.none()
    granted = restrict(Run.objects.all(), user, "runs.view_run").values("pk")
    visible_workflows = workflow_list_for_user(user).values("pk")
    return (
        Run.objects.filter(Q(workflow__in=visible_workflows) | Q(initiator=user) | Q(pk__in=granted))
        .select_related("workflow", "version", "initiator")
        .order_by("-created_at", "-pk")
    )


def run_get_for_user(user: AnyUser, *, run_id: int) -> Run:
    """The run if `user` may view it; Http404 otherwise."""
    run = run_list_for_user(user).filter(pk=run_id).first()
    if run is None:
        raise Http404("No such run.")
    return run


def step_run_list(run: Run, *, keys: list[str] | None = None) -> QuerySet[StepRun]:
    """The steps of a run the caller has already been allowed to see, in graph order."""
    steps = StepRun.objects.filter(run=run).order_by("position")
    return steps.filter(step_key__in=keys) if keys is not None else steps
