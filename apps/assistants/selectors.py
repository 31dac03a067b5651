"""Permission-aware reads of published tools: what a person may see on the pages, and what an agent calling
with that person's token is offered and may call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractUser, AnonymousUser
from django.db.models import Prefetch, QuerySet

from apps.assistants.models import PublishedTool
from apps.core.permissions import restrict
from apps.workflows.input_schema import is_document, property_order
from apps.workflows.models import Workflow, WorkflowVersion
from apps.workflows.selectors import workflow_version_published_latest

AnyUser = AbstractUser | AnonymousUser

# The JSON Schema keywords of a workflow input property that mean the same to an agent; the rest (x-order, the
# Run form's samples, "textarea") are the builder's business.
_KEPT_KEYWORDS = ("type", "title", "description", "enum", "default", "minLength", "maxLength", "minimum", "maximum")
_KEPT_FORMATS = {"date", "email"}


def tool_list_for_user(user: AnyUser) -> QuerySet[PublishedTool]:
    """The tools whose workflow `user` may view, by name, with their workflow and its published versions."""
    workflows = restrict(Workflow.objects.all(), user, "workflows.view_workflow")
    return _with_versions(PublishedTool.objects.filter(workflow__in=workflows))


def tool_for_workflow(workflow: Workflow) -> PublishedTool | None:
    """The workflow's tool, if it is published as one (the caller already may see the workflow)."""
    return PublishedTool.objects.filter(workflow=workflow).select_related("created_by").first()


def tool_get_by_name(name: str) -> PublishedTool | None:
    """The tool called exactly `name`, whoever may use it: for recording a refused call against it."""
    return PublishedTool.objects.filter(name=name).first()


@dataclass(frozen=True)
class OfferedTool:
    """A tool as an agent calling with a token sees it: the tool, its workflow, and the version a call runs."""

    tool: PublishedTool
    workflow: Workflow
    version: WorkflowVersion

    @property
    def input_schema(self) -> dict[str, Any]:
        return mcp_input_schema(self.version.input_schema)


def tools_offered_to(user: AnyUser, *, name: str | None = None) -> list[OfferedTool]:
    """The tools an agent calling as `user` is offered (only the one called `name` when given): enabled, their
    workflow not archived, published, and runnable by `user`. Anything else is, to the agent, no tool at all."""
    runnable = restrict(Workflow.objects.filter(archived_at__isnull=True), user, "workflows.run_workflow")
    tools = _with_versions(PublishedTool.objects.filter(enabled=True, workflow__in=runnable))
    if name is not None:
        tools = tools.filter(name=name)
    offered = []
    for tool in tools:
        version = workflow_version_published_latest(tool.workflow)
        if version is not None:
            offered.append(OfferedTool(tool=tool, workflow=tool.workflow, version=version))
    return offered


def _with_versions(tools: QuerySet[PublishedTool]) -> QuerySet[PublishedTool]:
    published = WorkflowVersion.objects.filter(state=WorkflowVersion.State.PUBLISHED).order_by("-number")
    return (
        tools.select_related("workflow", "workflow__team", "created_by")
        .prefetch_related(Prefetch("workflow__versions", queryset=published, to_attr="published_versions"))
        .order_by("name")
    )


def mcp_input_schema(schema: Any) -> dict[str, Any]:
    """A workflow's input schema as an MCP tool's `inputSchema`: the same fields, types and limits, no unknown
    fields (the run refuses them), and a document field as the `{"document": id}` the REST API takes (upload the
    file with `POST /api/documents/` first, with the same token)."""
    schema = schema if isinstance(schema, dict) else {}
    properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    required = set(schema.get("required") or [])
    out_properties: dict[str, Any] = {}
    out_required: list[str] = []
    for name in property_order(schema):
        spec = properties[name] if isinstance(properties[name], dict) else {}
        if is_document(spec):
            prop: dict[str, Any] = {
                "type": "object",
                "properties": {"document": {"type": "integer", "description": "The id POST /api/documents/ returned."}},
                "required": ["document"],
                "additionalProperties": False,
            }
            hint = "A document: upload the file with POST /api/documents/ (same token), then pass its id."
            prop["description"] = f"{spec.get('description', '')} {hint}".strip()
            if spec.get("title"):
                prop["title"] = spec["title"]
        else:
            prop = {key: spec[key] for key in _KEPT_KEYWORDS if key in spec}
            if spec.get("format") in _KEPT_FORMATS:
                prop["format"] = spec["format"]
            if spec.get("type") == "array":
                prop["items"] = {"type": "string"}
        out_properties[name] = prop
        # A yes/no field is never required: the Run form's unticked box is "no".
        if name in required and spec.get("type") != "boolean":
            out_required.append(name)
    result: dict[str, Any] = {"type": "object", "properties": out_properties, "additionalProperties": False}
    if out_required:
        result["required"] = out_required
    return result
