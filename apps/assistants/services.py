"""Publishing workflows as MCP tools, and what a call from an outside agent records.

Who may publish, change or withdraw a workflow's tool: whoever may change the workflow (its owner, admins). Who
may call it: whoever may run the workflow, with their API token (apps/assistants/mcp_server.py); a call is an
ordinary run started as that person, with trigger "mcp".
"""

from __future__ import annotations

import re
from typing import Any

from django.db import IntegrityError, transaction

from apps.accounts.models import User
from apps.assistants.models import TOOL_NAME_MAX_LENGTH, TOOL_NAME_PATTERN, PublishedTool
from apps.audit.services import audit_record
from apps.core.exceptions import Conflict, Forbidden, ValidationFailed
from apps.runs.lifecycle import run_lock
from apps.runs.models import Run
from apps.runs.services import run_start
from apps.workflows.models import Workflow
from apps.workflows.selectors import workflow_can_edit, workflow_version_published_latest

DESCRIPTION_MAX_LENGTH = 2000
_NAME = re.compile(TOOL_NAME_PATTERN)


def _require_edit(actor: User, workflow: Workflow) -> None:
    if not workflow_can_edit(actor, workflow):
        raise Forbidden("Only those who may change this workflow publish it as an MCP tool.")


def _require_publishable(workflow: Workflow) -> None:
    if workflow.archived_at is not None:
        raise Conflict(f'"{workflow.name}" is archived: restore it in its settings before offering it to agents.')
    if workflow_version_published_latest(workflow) is None:
        raise Conflict(f'"{workflow.name}" has no published version yet: publish one before offering it to agents.')


def _clean(name: Any, description: Any, *, tool: PublishedTool | None) -> tuple[str, str]:
    """The name and description as stored, or field errors saying what to change."""
    name, description = str(name or "").strip(), str(description or "").strip()
    errors: dict[str, list[str]] = {}
    if not name:
        errors["name"] = ["Give the tool a name, such as triage_claim."]
    elif len(name) > TOOL_NAME_MAX_LENGTH or not _NAME.match(name):
        errors["name"] = [
            f"Use letters, digits, _ and - only, starting with a letter, at most {TOOL_NAME_MAX_LENGTH} characters."
        ]
    else:
        taken = PublishedTool.objects.filter(name__iexact=name)
        if tool is not None:
            taken = taken.exclude(pk=tool.pk)
        if taken.exists():
            errors["name"] = [f"Another workflow is already published as “{name}” (names ignore case)."]
    if not description:
        errors["description"] = ["Describe what the tool does and what it returns: agents choose tools by it."]
    elif len(description) > DESCRIPTION_MAX_LENGTH:
        errors["description"] = [f"At most {DESCRIPTION_MAX_LENGTH} characters (this one has {len(description)})."]
    if errors:
        raise ValidationFailed("The tool is not valid.", fields=errors)
    return name, description


@transaction.atomic
def workflow_tool_publish(*, actor: User, workflow: Workflow, name: str, description: str) -> PublishedTool:
    """Offer `workflow` to outside agents as the MCP tool `name`. Refuses: Forbidden for whoever may not change
    the workflow; Conflict for an archived workflow, one with nothing published, or one already offered; field
    errors for a bad or taken name and a missing description."""
    _require_edit(actor, workflow)
    _require_publishable(workflow)
    if PublishedTool.objects.filter(workflow=workflow).exists():
        raise Conflict(f'"{workflow.name}" is already offered as an MCP tool: change that tool instead.')
    name, description = _clean(name, description, tool=None)
    try:
        with transaction.atomic():
            tool = PublishedTool.objects.create(workflow=workflow, name=name, description=description, created_by=actor)
    except IntegrityError:
        # A concurrent publish won the workflow's one tool or the name; say which, as the checks above would.
        if PublishedTool.objects.filter(workflow=workflow).exists():
            raise Conflict(f'"{workflow.name}" is already offered as an MCP tool: change that tool instead.') from None
        raise ValidationFailed(
            "The tool is not valid.", fields={"name": [f"Another workflow is already published as “{name}”."]}
        ) from None
    audit_record(
        actor=actor,
        verb="mcp_tool.published",
        target=tool,
        data={"workflow": workflow.slug, "name": name, "description": description},
    )
    return tool


@transaction.atomic
def workflow_tool_change(
    *,
    actor: User,
    tool: PublishedTool,
    name: str | None = None,
    description: str | None = None,
    enabled: bool | None = None,
) -> PublishedTool:
    """Rename, re-describe, pause (`enabled=False`) or resume a tool; what is not given stays. The same refusals as
    publishing, except that a paused tool of an archived workflow may stay paused."""
    _require_edit(actor, tool.workflow)
    tool = PublishedTool.objects.select_for_update(no_key=True, of=("self",)).select_related("workflow").get(pk=tool.pk)
    new_enabled = tool.enabled if enabled is None else bool(enabled)
    if new_enabled:
        _require_publishable(tool.workflow)
    new_name, new_description = _clean(
        tool.name if name is None else name, tool.description if description is None else description, tool=tool
    )
    changes: dict[str, Any] = {}
    for field, value in (("name", new_name), ("description", new_description), ("enabled", new_enabled)):
        if getattr(tool, field) != value:
            changes[field] = {"from": getattr(tool, field), "to": value}
            setattr(tool, field, value)
    if not changes:
        return tool
    try:
        with transaction.atomic():
            tool.save()
    except IntegrityError:
        raise ValidationFailed(
            "The tool is not valid.", fields={"name": [f"Another workflow is already published as “{new_name}”."]}
        ) from None
    audit_record(
        actor=actor, verb="mcp_tool.changed", target=tool, data={"workflow": tool.workflow.slug, "changes": changes}
    )
    return tool


@transaction.atomic
def workflow_tool_withdraw(*, actor: User, tool: PublishedTool) -> None:
    """Stop offering the workflow to outside agents: the tool is gone from every agent's list at once. Runs it
    started stay, with their audit trail."""
    _require_edit(actor, tool.workflow)
    audit_record(
        actor=actor,
        verb="mcp_tool.withdrawn",
        target=tool,
        data={"workflow": tool.workflow.slug, "name": tool.name},
    )
    PublishedTool.objects.filter(pk=tool.pk).delete()


# --- calls from outside agents ----------------------------------------------------------------------------------


@transaction.atomic
def tool_call_start(
    *, actor: User, tool: PublishedTool, inputs: dict[str, Any], idempotency_key: str = ""
) -> tuple[Run, bool]:
    """Start the run a tool call asks for, as `actor` (run_start checks the right to run and the inputs), and
    record `mcp.tool_called` in the run's own audit stream; returns (run, created). A repeated idempotency key
    returns the first run and records the repeat."""
    run, created = run_start(
        actor=actor, workflow=tool.workflow, inputs=inputs, trigger="mcp", idempotency_key=idempotency_key
    )
    if not created:
        # The run's stream is ordered by the run's lock; a run created in this transaction needs none.
        run_lock(run.pk)
    audit_record(
        actor=actor,
        verb="mcp.tool_called",
        target=run,
        data={"tool": tool.name, "run": run.pk, "workflow": tool.workflow.slug, "repeat": not created},
    )
    return run, created


def tool_call_refused_record(*, actor: User, name: str, reason: str) -> None:
    """Record a call the agent was answered "unknown tool" for: against the tool when one has that name (the
    caller may not run its workflow, or it is paused or not runnable now), else in the caller's own stream."""
    tool = PublishedTool.objects.filter(name=name).first()
    audit_record(
        actor=actor,
        verb="mcp.call_refused",
        target=tool if tool is not None else actor,
        data={"tool": name[:200], "reason": reason},
    )
