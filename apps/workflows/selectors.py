"""Permission-aware reads of workflows."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractUser, AnonymousUser
from django.db.models import Count, Prefetch, Q, QuerySet
from django.http import Http404

from apps.accounts.models import Team
from apps.core.permissions import has_object_perm, restrict
from apps.workflows.models import PinnedOutput, Workflow, WorkflowVersion
from apps.workflows.validation import version_problems

AnyUser = AbstractUser | AnonymousUser


def workflow_list_for_user(user: AnyUser) -> QuerySet[Workflow]:
    """The workflows `user` may view, by name, each with `published_versions` (newest first) prefetched."""
    published = WorkflowVersion.objects.filter(state=WorkflowVersion.State.PUBLISHED).order_by("-number")
    return (
        restrict(Workflow.objects.select_related("team", "owner"), user, "workflows.view_workflow")
        .prefetch_related(Prefetch("versions", queryset=published, to_attr="published_versions"))
        .order_by("name", "pk")
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
    what-if run needs, since it runs the workflow with a changed configuration.

    Remembered on the workflow instance for its user: one builder request asks it in the view and in every
    service it calls, and each answer costs django-guardian's queries. An instance lives for one request."""
    answers: dict[int | None, bool] = workflow.__dict__.setdefault("_can_edit", {})
    if user.pk not in answers:
        answers[user.pk] = has_object_perm(user, "workflows.change_workflow", workflow)
    return answers[user.pk]


def workflow_version_published_latest(workflow: Workflow) -> WorkflowVersion | None:
    """The newest published version, which new runs use; None before the first publish."""
    prefetched = getattr(workflow, "published_versions", None)
    if prefetched is not None:
        return prefetched[0] if prefetched else None
    return workflow.versions.filter(state=WorkflowVersion.State.PUBLISHED).order_by("-number").first()


# --- the builder's reads ------------------------------------------------------------------------------------


def workflow_draft_for(workflow: Workflow) -> WorkflowVersion | None:
    """The workflow's draft, if it has one."""
    return workflow.versions.filter(state=WorkflowVersion.State.DRAFT).select_related("updated_by").first()


def workflow_version_list(workflow: Workflow) -> QuerySet[WorkflowVersion]:
    """Every version, newest first, with who published it and how many runs it has."""
    return (
        workflow.versions.select_related("published_by", "created_by", "updated_by")
        .annotate(run_count=Count("runs", filter=~Q(runs__mode="test")))
        .order_by("-number", "-pk")
    )


def workflow_version_get(workflow: Workflow, *, number: int) -> WorkflowVersion:
    """One version of a workflow the caller already may see; Http404 for a number it does not have."""
    version = workflow.versions.filter(number=number).first()
    if version is None:
        raise Http404("No such version.")
    return version


@dataclass(frozen=True)
class Problem:
    """One publish problem: the step it belongs to (None for the workflow), the field path within the step's
    settings when known ("prompt", "fields.route"), and the message."""

    step: str | None
    field: str
    message: str

    @property
    def text(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message

    @property
    def anchor(self) -> str:
        """The id of the control the problem is about in the builder's step panel (the panel itself when the
        problem is about the step as a whole or one of its common options)."""
        if not self.field or self.field.startswith("@"):
            return "panel"
        return "field-config-" + re.sub(r"[^A-Za-z0-9_-]", "-", self.field)


_STEP_PROBLEM = re.compile(r'^step "(?P<key>[^"]+)": (?P<rest>.*)$', re.DOTALL)
_FIELD = re.compile(r"^(?P<path>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_-]+)*): (?P<message>.*)$", re.DOTALL)
_OPTION_FIELDS = {"key", "type", "name", "config", "inputs", "join", "retry", "timeout_seconds"}


def problems_parse(messages: list[str]) -> list[Problem]:
    """Publish-validator messages as structured problems (the step they name and the field path)."""
    result = []
    for message in messages:
        match = _STEP_PROBLEM.match(message)
        if not match:
            result.append(Problem(step=None, field="", message=message))
            continue
        rest = match["rest"]
        field_match = _FIELD.match(rest)
        if field_match and " " not in field_match["path"]:
            path = field_match["path"]
            if path.split(".")[0] == "config":
                path = path.partition(".")[2]
            elif path.split(".")[0] in _OPTION_FIELDS - {"config"}:
                path = f"@{path}"
            result.append(Problem(step=match["key"], field=path, message=field_match["message"]))
        else:
            result.append(Problem(step=match["key"], field="", message=rest))
    return result


def workflow_version_problems(version: WorkflowVersion) -> list[Problem]:
    """Everything that would stop `version` from being published, as the publish service would say it."""
    return problems_parse(version_problems(version))


def draft_sample_inputs(workflow: Workflow, index: int) -> dict[str, Any] | None:
    """The run input of the draft's saved sample number `index` (without its label), or None when there is no
    such sample."""
    draft = workflow_draft_for(workflow)
    schema = draft.input_schema if draft is not None and isinstance(draft.input_schema, dict) else {}
    samples = [sample for sample in schema.get("examples", []) if isinstance(sample, dict)]
    if not 0 <= index < len(samples):
        return None
    return {key: value for key, value in samples[index].items() if key != "label"}


def pinned_output_list(workflow: Workflow) -> QuerySet[PinnedOutput]:
    """The test data pinned for the draft's steps, by step key (the id breaks ties)."""
    return PinnedOutput.objects.filter(workflow=workflow).select_related("pinned_by").order_by("step_key", "pk")


def pinned_outputs_for(workflow: Workflow) -> dict[str, PinnedOutput]:
    """The test data pinned for the draft's steps, by step key."""
    return {pinned.step_key: pinned for pinned in pinned_output_list(workflow)}


def recent_runs_for_testing(user: AnyUser, workflow: Workflow, *, limit: int = 10) -> list[Any]:
    """The newest runs of the workflow the user may see (live and test), whose recorded inputs and finished
    outputs a step test may reuse. Read through the reverse relation: runs sit above workflows."""
    runs = workflow.runs.order_by("-created_at")
    if not (workflow_can_edit(user, workflow) or has_object_perm(user, "workflows.view_workflow", workflow)):
        return []
    return list(runs[:limit])


def sample_data_for(user: AnyUser, workflow: Workflow) -> dict[str, Any]:
    """The newest run's data ({"input", "steps"}) for the data picker's sample values; empty before any run
    and for a user who may not see the workflow's runs (the same rule as `recent_runs_for_testing`)."""
    runs = recent_runs_for_testing(user, workflow, limit=1)
    run = runs[0] if runs else None
    if run is None:
        return {}
    steps = dict(run.step_runs.filter(state="succeeded").values_list("step_key", "output"))
    return {"input": run.inputs, "steps": steps, "run": run.pk}


def workflow_list_filtered(
    user: AnyUser, *, q: str = "", team: str = "", owner: str = "", state: str = "active"
) -> QuerySet[Workflow]:
    """The workflows `user` may view, narrowed as the list page and the API filter them: a search over name and
    description, a team's slug, `owner="me"`, and `state` "active" (the default), "archived" or "all"."""
    workflows = workflow_list_for_user(user)
    if q:
        workflows = workflows.filter(Q(name__icontains=q) | Q(description__icontains=q))
    if team:
        workflows = workflows.filter(team__slug=team)
    if owner == "me":
        workflows = workflows.filter(owner_id=user.pk)
    if state == "archived":
        workflows = workflows.filter(archived_at__isnull=False)
    elif state != "all":
        workflows = workflows.filter(archived_at__isnull=True)
    return workflows


def team_list_assignable(user: AnyUser) -> QuerySet[Team]:
    """The teams `user` may give a workflow to: their own teams (admins, who manage teams: every team)."""
    if not user.is_authenticated:
        return Team.objects.none()
    if user.has_perm("accounts.change_team"):
        return Team.objects.order_by("name")
    return Team.objects.filter(group__user__pk=user.pk).order_by("name")
