"""Writes for workflows and their versions."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import Max
from django.utils import timezone
from django.utils.text import slugify
from guardian.shortcuts import assign_perm

from apps.accounts.models import Team, User
from apps.audit.services import audit_record
from apps.core.exceptions import ApplicationError, Conflict, ValidationFailed
from apps.steps.registry import step_type_get
from apps.workflows.graph import graph_checksum, graph_errors
from apps.workflows.input_schema import input_schema_errors
from apps.workflows.models import Workflow, WorkflowVersion

OWNER_PERMISSIONS = ("view_workflow", "change_workflow", "run_workflow")
TEAM_PERMISSIONS = ("view_workflow", "run_workflow")


@transaction.atomic
def workflow_create(
    *,
    actor: User,
    name: str,
    description: str = "",
    team: Team | None = None,
    baseline_minutes_per_case: Decimal = Decimal("0"),
) -> Workflow:
    """Create a workflow owned by `actor`; the owner and the team's members get object permissions."""
    slug = slugify(name)
    if not slug:
        raise ValidationFailed("The workflow needs a name.", fields={"name": ["Use letters or digits."]})
    if Workflow.objects.filter(slug=slug).exists():
        raise ValidationFailed("That name is taken.", fields={"name": [f'A workflow named "{name}" exists.']})
    workflow = Workflow.objects.create(
        name=name,
        slug=slug,
        description=description,
        owner=actor,
        team=team,
        baseline_minutes_per_case=baseline_minutes_per_case,
    )
    for perm in OWNER_PERMISSIONS:
        assign_perm(f"workflows.{perm}", actor, workflow)
    if team is not None:
        for perm in TEAM_PERMISSIONS:
            assign_perm(f"workflows.{perm}", team.group, workflow)
    audit_record(actor=actor, verb="workflow.created", target=workflow, data={"team": team.slug if team else None})
    return workflow


@transaction.atomic
def workflow_version_create(
    *, actor: User, workflow: Workflow, graph: dict[str, Any], input_schema: dict[str, Any]
) -> WorkflowVersion:
    """Add a draft version with the next number. Drafts may be invalid; publishing checks them."""
    # Lock the workflow row so two concurrent drafts cannot take the same number.
    Workflow.objects.select_for_update().filter(pk=workflow.pk).first()
    number = (workflow.versions.aggregate(top=Max("number"))["top"] or 0) + 1
    version = WorkflowVersion.objects.create(
        workflow=workflow, number=number, graph=graph, input_schema=input_schema, created_by=actor
    )
    audit_record(actor=actor, verb="workflow.version_created", target=version, data={"number": number})
    return version


def _pin_workflow_versions(graph: dict[str, Any], *, own_workflow: Workflow) -> tuple[dict[str, Any], list[str]]:
    """The graph with every sub-workflow reference pinned to a published version number, and the problems
    found (a missing workflow, one with nothing published, a workflow that runs itself)."""
    pinned = copy.deepcopy(graph)
    problems = []
    for step in pinned.get("steps", []):
        try:
            if not step_type_get(str(step.get("type"))).pins_workflow_version:
                continue
        except KeyError:
            continue  # reported by graph_errors
        config = step.get("config") or {}
        slug, number = config.get("workflow"), config.get("version")
        if slug == own_workflow.slug:
            problems.append(f'step "{step.get("key")}": a workflow cannot run itself')
            continue
        versions = WorkflowVersion.objects.filter(workflow__slug=slug, state=WorkflowVersion.State.PUBLISHED)
        if number is not None:
            versions = versions.filter(number=number)
        found = versions.order_by("-number").values_list("number", flat=True).first()
        if found is None:
            wanted = f"version {number} of " if number is not None else ""
            problems.append(f'step "{step.get("key")}": there is no published {wanted}workflow "{slug}"')
            continue
        config["version"] = found
    return pinned, problems


@transaction.atomic
def workflow_version_publish(*, actor: User, version: WorkflowVersion) -> WorkflowVersion:
    """Freeze a draft: validate everything, stamp its checksum, and make it immutable.

    Refuses with every problem found (each naming its step), so the analyst fixes them in one pass.
    """
    version = WorkflowVersion.objects.select_for_update().get(pk=version.pk)
    if version.is_published:
        raise Conflict(f"Version {version.number} is already published and cannot change.")
    problems = input_schema_errors(version.input_schema) + graph_errors(version.graph)
    graph, pin_problems = _pin_workflow_versions(version.graph, own_workflow=version.workflow)
    problems += pin_problems
    if problems:
        raise ApplicationError("The version cannot be published.", extra={"problems": problems})
    version.graph = graph
    version.checksum = graph_checksum(version.graph, version.input_schema)
    version.state = WorkflowVersion.State.PUBLISHED
    version.published_by = actor
    version.published_at = timezone.now()
    version.save(update_fields=["graph", "checksum", "state", "published_by", "published_at"])
    audit_record(
        actor=actor,
        verb="workflow.published",
        target=version,
        data={"workflow": version.workflow.slug, "number": version.number, "checksum": version.checksum},
    )
    return version
