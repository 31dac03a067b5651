"""Permission-aware reads of runs.

A user sees a run when they may view its workflow, started it themselves, or were granted `view_run` on
it (directly or through a role).
"""

from __future__ import annotations

import hashlib
from typing import Any

from django.contrib.auth.models import AbstractUser, AnonymousUser
from django.db.models import Q, QuerySet
from django.http import Http404

from apps.core.permissions import restrict
from apps.runs.models import Incident, Run, StepRun
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


def run_can_operate(user: AnyUser, run: Run) -> bool:
    """Whether `user` may cancel, restart or resolve incidents of `run`: whoever may run its workflow."""
    from apps.workflows.selectors import workflow_can_run

    return workflow_can_run(user, run.workflow)


def incident_get_for_user(user: AnyUser, *, incident_id: int) -> Incident:
    """An incident of a run `user` may view; Http404 otherwise."""
    incident = (
        Incident.objects.select_related("run", "run__workflow", "step_run")
        .filter(pk=incident_id, run__in=run_list_for_user(user).values("pk"))
        .first()
    )
    if incident is None:
        raise Http404("No such incident.")
    return incident


def incident_list_open(run: Run) -> QuerySet[Incident]:
    """The unresolved incidents of a run the caller may already see."""
    return Incident.objects.filter(run=run, resolved_at__isnull=True).select_related("step_run")


def run_page_context(user: AnyUser, run: Run) -> dict[str, Any]:
    """What the run page and its pushed fragments show (one place, so a reload shows what was pushed)."""
    incidents = {incident.step_run_id: incident for incident in incident_list_open(run)}
    steps = list(step_run_list(run))
    for step in steps:
        step.open_incident = incidents.get(step.pk)  # type: ignore[attr-defined]
    return {
        "run": run,
        "steps": steps,
        "can_operate": run_can_operate(user, run),
        "signature": run_signature(run, steps, incidents.values()),
    }


def run_signature(run: Run, steps: list[StepRun], incidents: Any) -> str:
    """A short fingerprint of everything the run page shows. The page hands it to its WebSocket, which
    sends a catch-up render only when the run changed since the page was rendered (a needless re-render
    would throw away what the person was typing into a form on the page)."""
    parts = [run.status, str(run.finished_at)]
    parts += [f"{s.step_key}:{s.state}:{s.fencing_token}:{len(s.streamed_text)}" for s in steps]
    parts += sorted(f"i{incident.pk}" for incident in incidents)
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
