"""MCP tool pages: the tools a person may see and how an agent connects, and a workflow's tool (publish, change,
pause, withdraw). Whoever may see a workflow sees its tool; whoever may change the workflow manages it."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from apps.assistants.mcp_server import PATH
from apps.assistants.models import TOOL_NAME_MAX_LENGTH, PublishedTool
from apps.assistants.selectors import mcp_input_schema, tool_for_workflow, tool_list_for_user
from apps.assistants.services import (
    DESCRIPTION_MAX_LENGTH,
    workflow_tool_change,
    workflow_tool_publish,
    workflow_tool_withdraw,
)
from apps.core.exceptions import ApplicationError, ValidationFailed
from apps.workflows.models import Workflow
from apps.workflows.selectors import (
    workflow_can_edit,
    workflow_can_run,
    workflow_get_for_user,
    workflow_version_published_latest,
)


def endpoint_url() -> str:
    """Where outside agents reach the MCP endpoint."""
    return settings.AIOS_PUBLIC_URLS[0].rstrip("/") + PATH


def tool_state(tool: PublishedTool) -> tuple[str, str]:
    """(badge modifier, words) for a tool's state as agents meet it."""
    if not tool.enabled:
        return "cancelled", "Paused"
    if tool.workflow.archived_at is not None:
        return "cancelled", "Workflow archived"
    if workflow_version_published_latest(tool.workflow) is None:
        return "cancelled", "Nothing published"
    return "succeeded", "Offered"


@login_required
def tool_list(request: HttpRequest) -> HttpResponse:
    """The MCP tools of the workflows the user may see, and how an outside agent connects."""
    rows = [
        {
            "tool": tool,
            "state": tool_state(tool),
            "can_call": workflow_can_run(request.user, tool.workflow),
            "can_edit": workflow_can_edit(request.user, tool.workflow),
        }
        for tool in tool_list_for_user(request.user)
    ]
    return render(request, "assistants/tool_list.html", {"rows": rows, "endpoint": endpoint_url()})


def _editable(request: HttpRequest, slug: str) -> Workflow:
    workflow = workflow_get_for_user(request.user, slug=slug)
    if not workflow_can_edit(request.user, workflow):
        raise PermissionDenied("Only those who may change this workflow publish it as an MCP tool.")
    return workflow


@login_required
@require_http_methods(["GET", "POST"])
def workflow_tool(request: HttpRequest, slug: str) -> HttpResponse:
    """Publish the workflow as an MCP tool, or change its tool's name and description, pause or resume it."""
    workflow = _editable(request, slug)
    tool = tool_for_workflow(workflow)
    version = workflow_version_published_latest(workflow)
    values: dict[str, Any] = {
        "name": tool.name if tool else "",
        "description": tool.description if tool else workflow.description,
        "enabled": tool.enabled if tool else True,
    }
    errors: dict[str, list[str]] = {}
    refusal = ""
    if request.method == "POST":
        values = {
            "name": request.POST.get("name", ""),
            "description": request.POST.get("description", ""),
            "enabled": request.POST.get("enabled") == "on",
        }
        try:
            if tool is None:
                tool = workflow_tool_publish(
                    actor=request.user,  # type: ignore[arg-type]
                    workflow=workflow,
                    name=values["name"],
                    description=values["description"],
                )
                messages.success(request, f"“{workflow.name}” is offered to outside agents as {tool.name}.")
            else:
                workflow_tool_change(
                    actor=request.user,  # type: ignore[arg-type]
                    tool=tool,
                    name=values["name"],
                    description=values["description"],
                    enabled=values["enabled"],
                )
                messages.success(request, "The MCP tool was saved.")
        except ValidationFailed as invalid:
            errors = invalid.fields
        except ApplicationError as error:
            refusal = error.message
        else:
            return redirect("assistants:workflow-tool", slug=workflow.slug)
    context = {
        "workflow": workflow,
        "tool": tool,
        "state": tool_state(tool) if tool else None,
        "version": version,
        "schema": mcp_input_schema(version.input_schema) if version else None,
        "values": values,
        "errors": errors,
        "refusal": refusal,
        "endpoint": endpoint_url(),
        "name_max": TOOL_NAME_MAX_LENGTH,
        "description_max": DESCRIPTION_MAX_LENGTH,
    }
    return render(request, "assistants/workflow_tool.html", context, status=400 if errors or refusal else 200)


@login_required
@require_http_methods(["GET", "POST"])
def workflow_tool_withdraw_view(request: HttpRequest, slug: str) -> HttpResponse:
    """Ask, then stop offering the workflow to outside agents."""
    workflow = _editable(request, slug)
    tool = tool_for_workflow(workflow)
    if tool is None:
        messages.info(request, f"“{workflow.name}” is not offered as an MCP tool.")
        return redirect("assistants:workflow-tool", slug=workflow.slug)
    if request.method == "POST":
        workflow_tool_withdraw(actor=request.user, tool=tool)  # type: ignore[arg-type]
        messages.success(request, f"{tool.name} was withdrawn: agents no longer see it.")
        return redirect("assistants:workflow-tool", slug=workflow.slug)
    return render(request, "assistants/tool_withdraw.html", {"workflow": workflow, "tool": tool})
