"""Writes for workflows and their versions."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import Max
from django.utils import timezone
from django.utils.text import slugify
from guardian.shortcuts import assign_perm, remove_perm

from apps.accounts.models import Team, User
from apps.audit.services import audit_record
from apps.core.exceptions import ApplicationError, Conflict, Forbidden, ValidationFailed
from apps.steps.registry import step_type_get
from apps.workflows.agent_tools import agent_config_problems
from apps.workflows.graph import graph_checksum
from apps.workflows.models import PinnedOutput, Workflow, WorkflowVersion
from apps.workflows.selectors import workflow_can_edit, workflow_can_run, workflow_list_for_user
from apps.workflows.uses import uses_problems
from apps.workflows.validation import sub_workflows_pinned, version_problems

EMPTY_INPUT_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}, "required": []}
MAX_NAME_LENGTH = 120
# Slugs that would collide with the workflow pages' and API's own addresses (/workflows/new/, /api/workflows/import/).
RESERVED_SLUGS = frozenset({"new", "import", "export", "schema"})

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
    slug: str | None = None,
) -> Workflow:
    """Create a workflow owned by `actor`; the owner and the team's members get object permissions.

    The slug (its identity in addresses, exports and sub-workflow steps) comes from the name unless given (an
    import keeps the slug of the workflow it came from), and never changes afterwards.
    """
    name = name.strip()
    if len(name) > MAX_NAME_LENGTH:
        raise ValidationFailed("The name is too long.", fields={"name": [f"At most {MAX_NAME_LENGTH} characters."]})
    slug = slug or slugify(name)
    if not slug or not name:
        raise ValidationFailed("The workflow needs a name.", fields={"name": ["Use letters or digits."]})
    if slug in RESERVED_SLUGS:
        raise ValidationFailed(
            "Choose another name.", fields={"name": [f'"{name}" is a word the product uses in addresses.']}
        )
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
    """The workflow's draft holding `graph` and `input_schema`: a new draft with the next number, or the
    existing draft overwritten (a workflow has one draft). Drafts may be invalid; publishing checks them."""
    existing = _draft_locked(workflow)
    if existing is not None:
        return _draft_write(existing, actor=actor, graph=graph, input_schema=input_schema, label="Replace the draft")
    return _draft_new(workflow, actor=actor, graph=graph, input_schema=input_schema)


def _draft_locked(workflow: Workflow) -> WorkflowVersion | None:
    """The workflow's draft, row-locked, after locking the workflow row (so two first saves cannot both create
    one: the lock order is workflow, then version)."""
    Workflow.objects.select_for_update().filter(pk=workflow.pk).first()
    drafts = WorkflowVersion.objects.select_for_update().filter(workflow=workflow, state=WorkflowVersion.State.DRAFT)
    draft = drafts.first()
    if draft is not None:
        draft.workflow = workflow  # what the audit row names; its slug never changes
    return draft


def _draft_new(
    workflow: Workflow, *, actor: User, graph: dict[str, Any], input_schema: dict[str, Any]
) -> WorkflowVersion:
    # Revisions keep rising across a workflow's drafts, so an editor still holding a revision of a draft that
    # has since been published can never match the next draft by chance.
    top = workflow.versions.aggregate(number=Max("number"), revision=Max("revision"))
    number = (top["number"] or 0) + 1
    version = WorkflowVersion.objects.create(
        workflow=workflow,
        number=number,
        revision=(top["revision"] or 0) + 1,
        graph=graph,
        input_schema=input_schema,
        created_by=actor,
        updated_by=actor,
    )
    audit_record(actor=actor, verb="workflow.version_created", target=version, data={"number": number})
    return version


def _draft_write(
    draft: WorkflowVersion, *, actor: User, graph: dict[str, Any], input_schema: dict[str, Any], label: str
) -> WorkflowVersion:
    draft.undo = {
        "graph": draft.graph,
        "input_schema": draft.input_schema,
        "label": label,
        "revision": draft.revision + 1,
    }
    draft.graph, draft.input_schema = graph, input_schema
    draft.revision += 1
    draft.updated_by, draft.updated_at = actor, timezone.now()
    draft.save(update_fields=["graph", "input_schema", "revision", "updated_by", "updated_at", "undo"])
    audit_record(
        actor=actor,
        verb="workflow.draft_saved",
        target=draft,
        data={"workflow": draft.workflow.slug, "revision": draft.revision, "change": label},
    )
    return draft


def _require_edit(actor: User, workflow: Workflow) -> None:
    if not workflow_can_edit(actor, workflow):
        raise Forbidden("You may view this workflow but not change it.")


def _draft_shape_errors(graph: Any, input_schema: Any) -> dict[str, list[str]]:
    """What makes content unstorable as a draft at all (a draft may be invalid, but it must be a graph)."""
    errors: dict[str, list[str]] = {}
    if not isinstance(graph, dict) or not isinstance(graph.get("steps"), list):
        errors["graph"] = ['Must be an object with a "steps" list (and optionally "edges").']
    if not isinstance(input_schema, dict):
        errors["input_schema"] = ["Must be an object (a JSON Schema of the run's input fields)."]
    return errors


class _Unchanged:
    """The value of an argument the caller does not want to change (None means "no team")."""


UNCHANGED = _Unchanged()


class DraftConflict(Conflict):
    """The draft changed since the editor loaded it; `extra` names who saved it, when, and its revision."""


@transaction.atomic
def workflow_draft_get_or_create(*, actor: User, workflow: Workflow) -> WorkflowVersion:
    """The workflow's draft; when it has none, one is started from the newest published version (or empty)."""
    _require_edit(actor, workflow)
    draft = _draft_locked(workflow)
    if draft is not None:
        return draft
    base = workflow.versions.filter(state=WorkflowVersion.State.PUBLISHED).order_by("-number").first()
    graph = copy.deepcopy(base.graph) if base else {"steps": []}
    schema = copy.deepcopy(base.input_schema) if base else copy.deepcopy(EMPTY_INPUT_SCHEMA)
    return _draft_new(workflow, actor=actor, graph=graph, input_schema=schema)


@transaction.atomic
def workflow_draft_save(
    *,
    actor: User,
    workflow: Workflow,
    graph: dict[str, Any],
    input_schema: dict[str, Any],
    expected_revision: int | None,
    label: str = "Edit",
) -> WorkflowVersion:
    """Save the draft (creating it when needed). Content may fail publish validation, but must be a graph.

    `expected_revision` is the revision the editor loaded: when the draft has moved on since (someone else
    saved), the save is refused with `DraftConflict` naming them, so nobody's work is silently overwritten.
    None overwrites knowingly.
    """
    _require_edit(actor, workflow)
    shape = _draft_shape_errors(graph, input_schema)
    if shape:
        raise ValidationFailed("The draft cannot be saved.", fields=shape)
    draft = _draft_locked(workflow)
    if draft is None and expected_revision is not None:
        published = workflow.versions.filter(state=WorkflowVersion.State.PUBLISHED).order_by("-number").first()
        raise DraftConflict(
            "The draft you were editing has been published"
            + (f" as version {published.number}" if published else "")
            + ". Reload to start a new draft from it, or save again to make yours the new draft.",
            extra={"revision": None, "updated_by": None, "updated_at": None},
        )
    if draft is None:
        draft = _draft_new(workflow, actor=actor, graph={"steps": []}, input_schema=copy.deepcopy(EMPTY_INPUT_SCHEMA))
    elif expected_revision is not None and expected_revision != draft.revision:
        who = draft.updated_by.display_name if draft.updated_by else "someone"
        raise DraftConflict(
            f"{who} changed this draft at {timezone.localtime(draft.updated_at):%H:%M:%S} "
            f"(revision {draft.revision}, you started from {expected_revision}). Reload to see their changes, "
            "or save again to overwrite them.",
            extra={
                "revision": draft.revision,
                "updated_by": draft.updated_by.get_username() if draft.updated_by else None,
                "updated_at": draft.updated_at.isoformat(),
            },
        )
    return _draft_write(draft, actor=actor, graph=graph, input_schema=input_schema, label=label)


@transaction.atomic
def workflow_draft_undo(*, actor: User, workflow: Workflow, expected_revision: int | None) -> WorkflowVersion:
    """Put the draft back as it was before its last save (one step; undoing twice redoes)."""
    _require_edit(actor, workflow)
    draft = _draft_locked(workflow)
    if draft is None or not draft.undo:
        raise Conflict("There is nothing to undo.")
    if expected_revision is not None and expected_revision != draft.revision:
        raise DraftConflict(
            "The draft changed since you loaded it; reload before undoing.", extra={"revision": draft.revision}
        )
    previous = draft.undo
    return _draft_write(
        draft,
        actor=actor,
        graph=previous["graph"],
        input_schema=previous["input_schema"],
        label=f"Undo: {previous.get('label', 'edit')}",
    )


@transaction.atomic
def workflow_version_restore_as_draft(*, actor: User, version: WorkflowVersion) -> WorkflowVersion:
    """Make an earlier version's content the draft (the current draft is kept for one undo)."""
    if not version.is_published:
        raise Conflict("Only a published version can be restored as the draft.")
    return workflow_draft_save(
        actor=actor,
        workflow=version.workflow,
        graph=copy.deepcopy(version.graph),
        input_schema=copy.deepcopy(version.input_schema),
        expected_revision=None,
        label=f"Restore version {version.number}",
    )


@transaction.atomic
def workflow_update(
    *,
    actor: User,
    workflow: Workflow,
    name: str | None = None,
    description: str | None = None,
    team: Team | None | _Unchanged = UNCHANGED,
    baseline_minutes_per_case: Decimal | None = None,
) -> Workflow:
    """Rename, describe, move to another team or change the ROI baseline. The slug (the workflow's identity in
    URLs, exports and sub-workflow steps) never changes. Moving teams moves the team's object permissions."""
    _require_edit(actor, workflow)
    workflow = Workflow.objects.select_for_update().get(pk=workflow.pk)
    changes: dict[str, Any] = {}
    fields: dict[str, list[str]] = {}
    if name is not None:
        name = name.strip()
        if not name:
            fields["name"] = ["The workflow needs a name."]
        elif len(name) > MAX_NAME_LENGTH:
            fields["name"] = [f"At most {MAX_NAME_LENGTH} characters."]
        elif name != workflow.name:
            changes["name"] = [workflow.name, name]
            workflow.name = name
    if description is not None and description != workflow.description:
        changes["description"] = True
        workflow.description = description
    if baseline_minutes_per_case is not None:
        if baseline_minutes_per_case < 0 or baseline_minutes_per_case >= Decimal("1000000"):
            fields["baseline_minutes_per_case"] = ["Minutes per case must be between 0 and 999,999."]
        elif baseline_minutes_per_case != workflow.baseline_minutes_per_case:
            changes["baseline_minutes_per_case"] = [
                str(workflow.baseline_minutes_per_case),
                str(baseline_minutes_per_case),
            ]
            workflow.baseline_minutes_per_case = baseline_minutes_per_case
    if fields:
        raise ValidationFailed("The workflow was not changed.", fields=fields)
    if not isinstance(team, _Unchanged) and team != workflow.team:
        old_team = workflow.team
        if old_team is not None:
            for perm in TEAM_PERMISSIONS:
                remove_perm(f"workflows.{perm}", old_team.group, workflow)
        if team is not None:
            for perm in TEAM_PERMISSIONS:
                assign_perm(f"workflows.{perm}", team.group, workflow)
        changes["team"] = [old_team.slug if old_team else None, team.slug if team else None]
        workflow.team = team
    if changes:
        workflow.save()
        audit_record(actor=actor, verb="workflow.updated", target=workflow, data=changes)
    return workflow


@transaction.atomic
def workflow_archive(*, actor: User, workflow: Workflow, archived: bool = True) -> Workflow:
    """Archive (hide from lists, refuse new runs) or restore a workflow; versions and runs are kept."""
    _require_edit(actor, workflow)
    workflow = Workflow.objects.select_for_update().get(pk=workflow.pk)
    if (workflow.archived_at is not None) == archived:
        return workflow
    workflow.archived_at = timezone.now() if archived else None
    workflow.save(update_fields=["archived_at", "updated_at"])
    audit_record(actor=actor, verb="workflow.archived" if archived else "workflow.restored", target=workflow)
    return workflow


# Filled by upper apps: checks of what the publisher may name in a graph (the approvals app: queues she may
# use). Each returns problems, each naming its step.
PUBLISH_CHECKS: list[Callable[[User, dict[str, Any]], list[str]]] = []


@dataclass(frozen=True)
class GateVerdict:
    """What a publish gate says about a draft: `problems` refuse it; `overridden` (when an admin's override
    reason let it through) is the sentence the version's note records; `details` go into the refusal as
    they are (the evaluations app: the summary of the newest report); `evidence` is what the gate saw when it
    let the draft through, kept in the "workflow.published" audit event under "gates"."""

    problems: list[str] = field(default_factory=list)
    overridden: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PublishRoute:
    """Where the draft's publish form posts instead of the plain publish, and what to tell the publisher."""

    action: str
    explanation: str


# Filled by upper apps: gates a draft passes after its own problems are fixed (the evaluations app: the
# workflow's evaluation suite passed on exactly this content). Called inside the publish transaction with the
# draft locked and the publisher's override reason ("" for none); a gate may refuse an override (Forbidden).
PUBLISH_GATES: list[Callable[[User, WorkflowVersion, str], GateVerdict]] = []
# Filled by upper apps that put a step between "Publish" and the version (the evaluations app: a suite runs
# first, and publishes when it passes). The first route returned is the one the builder's form uses.
PUBLISH_ROUTES: list[Callable[[Workflow], PublishRoute | None]] = []


# Filled by upper apps beside PUBLISH_GATES: what their gate would refuse a draft for, read only (no evidence
# recorded, no override), so the builder can say before a publish that one will be refused.
PUBLISH_GATE_PREVIEWS: list[Callable[[WorkflowVersion], list[str]]] = []


def workflow_publish_gate_problems(version: WorkflowVersion) -> list[str]:
    """What the PUBLISH_GATES would refuse `version` for now (without an override), saving nothing."""
    return [problem for preview in PUBLISH_GATE_PREVIEWS for problem in preview(version)]


class PublishGated(Conflict):
    """A gate refused the draft (its own problems are fixed); `extra` has the gates' problems and details."""


def workflow_publish_route(workflow: Workflow) -> PublishRoute | None:
    """The route an upper app gives the draft's publish form, if any (see PUBLISH_ROUTES)."""
    return next((route for hook in PUBLISH_ROUTES if (route := hook(workflow)) is not None), None)


def _sub_workflow_rights_problems(user: Any, graph: dict[str, Any]) -> list[str]:
    """The sub-workflow and for-each references in `graph` that `user`, the publisher, may not run: a child run
    starts with its parent's initiator and is visible to her, so publishing must not let anyone run (and read
    the outputs of) a workflow she could not start herself. A workflow she cannot see reads as not found."""
    problems = []
    for step in graph.get("steps", []) if isinstance(graph.get("steps"), list) else []:
        if not isinstance(step, dict) or not isinstance(step.get("config"), dict):
            continue
        try:
            if not step_type_get(str(step.get("type"))).pins_workflow_version:
                continue
        except KeyError:
            continue
        slug = step["config"].get("workflow")
        if not isinstance(slug, str) or not Workflow.objects.filter(slug=slug).exists():
            continue  # reported by sub_workflows_pinned
        workflow = workflow_list_for_user(user).filter(slug=slug).first()
        if workflow is None:
            # Worded as sub_workflows_pinned words a missing one: a workflow she cannot see does not exist for her.
            problems.append(f'step "{step.get("key")}": there is no published workflow "{slug}"')
        elif not workflow_can_run(user, workflow):
            problems.append(f'step "{step.get("key")}": you may not run the workflow "{slug}"')
    return problems


@transaction.atomic
def workflow_version_publish(
    *,
    actor: User,
    version: WorkflowVersion,
    note: str = "",
    expected_revision: int | None = None,
    override_reason: str = "",
) -> WorkflowVersion:
    """Freeze a draft: validate everything, stamp its checksum, and make it immutable, with a change note.

    Refuses with every problem found (each naming its step), so the analyst fixes them in one pass; with
    `expected_revision`, refuses a draft that changed since the publisher looked at it. A draft free of
    problems then passes the PUBLISH_GATES, or is refused with `PublishGated`; `override_reason` is what an
    admin gives to publish over a gate (the gate decides who may, and audits it).
    """
    _require_edit(actor, version.workflow)
    # The lock order of every draft write: the workflow row, then the version row.
    Workflow.objects.select_for_update().filter(pk=version.workflow_id).first()
    version = WorkflowVersion.objects.select_for_update().select_related("workflow").get(pk=version.pk)
    if version.is_published:
        raise Conflict(f"Version {version.number} is already published and cannot change.")
    if expected_revision is not None and expected_revision != version.revision:
        raise DraftConflict(
            "The draft changed since you looked at it; review the changes, then publish again.",
            extra={"revision": version.revision},
        )
    problems = version_problems(version)
    problems += uses_problems(actor, version.graph, workflow=version.workflow)
    # An agent's tools name workflows too: the publisher must be able to run them (connections and collections
    # are in uses_problems above; everything else in version_problems).
    problems += [
        problem
        for problem in agent_config_problems(version.graph, own_slug=version.workflow.slug, user=actor)
        if ".step.config.workflow:" in problem and problem not in problems
    ]
    problems += [problem for check in PUBLISH_CHECKS for problem in check(actor, version.graph)]
    problems += _sub_workflow_rights_problems(actor, version.graph)
    graph, _ = sub_workflows_pinned(version.graph, own_workflow=version.workflow)
    if problems:
        raise ApplicationError("The version cannot be published.", extra={"problems": problems})
    verdicts = [gate(actor, version, override_reason.strip()) for gate in PUBLISH_GATES]
    refused = [problem for verdict in verdicts for problem in verdict.problems]
    if refused:
        details = {key: value for verdict in verdicts for key, value in verdict.details.items()}
        raise PublishGated(refused[0], extra={"problems": refused, **details})
    overridden = [verdict.overridden for verdict in verdicts if verdict.overridden]
    evidence = {key: value for verdict in verdicts for key, value in verdict.evidence.items()}
    version.graph = graph
    version.checksum = graph_checksum(version.graph, version.input_schema)
    version.state = WorkflowVersion.State.PUBLISHED
    version.published_by = actor
    version.published_at = timezone.now()
    # The version itself says it went out over a gate, wherever its note is read.
    version.note = "\n\n".join([note.strip()[:5000], *overridden]).strip()
    version.undo = None
    version.save(update_fields=["graph", "checksum", "state", "published_by", "published_at", "note", "undo"])
    audit_record(
        actor=actor,
        verb="workflow.published",
        target=version,
        data={
            "workflow": version.workflow.slug,
            "number": version.number,
            "checksum": version.checksum,
            "note": version.note,
            **({"gates_overridden": overridden} if overridden else {}),
            **({"gates": evidence} if evidence else {}),
        },
    )
    return version


# --- test data beside the draft ----------------------------------------------------------------------------------

MAX_PINNED_BYTES = 1_000_000


@transaction.atomic
def pinned_output_set(*, actor: User, workflow: Workflow, step_key: str, output: Any) -> PinnedOutput:
    """Pin the output a step gives in test runs of the draft (replacing an earlier pin). Never reaches a
    version, an export or a live run."""
    _require_edit(actor, workflow)
    if not isinstance(output, dict):
        raise ValidationFailed(
            "Pinned data is an object.", fields={"output": ['Give an object, e.g. {"text": "..."}.']}
        )
    if len(json.dumps(output)) > MAX_PINNED_BYTES:
        raise ValidationFailed("Pinned data is too large.", fields={"output": ["At most 1 MB."]})
    pinned, _ = PinnedOutput.objects.update_or_create(
        workflow=workflow,
        step_key=step_key,
        defaults={"output": output, "pinned_by": actor, "pinned_at": timezone.now()},
    )
    audit_record(actor=actor, verb="workflow.test_data_pinned", target=workflow, data={"step": step_key})
    return pinned


@transaction.atomic
def pinned_output_clear(*, actor: User, workflow: Workflow, step_key: str) -> None:
    """Unpin a step's test data."""
    _require_edit(actor, workflow)
    if PinnedOutput.objects.filter(workflow=workflow, step_key=step_key).delete()[0]:
        audit_record(actor=actor, verb="workflow.test_data_unpinned", target=workflow, data={"step": step_key})
