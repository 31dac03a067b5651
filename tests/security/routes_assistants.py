"""Routes × personas for MCP tools (apps/assistants/views.py) and one's API token (apps/accounts/views.py).

Everyone signed in reads the tools list (it shows only the tools of workflows they may see) and manages their own
API token; a workflow's tool page and its withdrawal are for whoever may change the workflow (its owner): those
who may only see it are told no (403), others may not know it exists (404). The MCP endpoint itself (/mcp) is not
a Django route: tests/assistants/test_mcp_endpoint.py covers it by persona over the SDK's own client."""

from __future__ import annotations

from typing import Any

OK, HIDDEN, FORBIDDEN, LOGIN = 200, 404, 403, 302
EVERYONE = {"analyst": OK, "reviewer": OK, "manager": OK, "outsider": OK, "auditor": OK, "anonymous": LOGIN}
EDIT = {"analyst": OK, "reviewer": FORBIDDEN, "manager": FORBIDDEN, "outsider": HIDDEN, "anonymous": LOGIN}

MATRIX: dict[str, dict[str, int]] = {
    "assistants:tools": EVERYONE,
    "assistants:workflow-tool": EDIT,
    "assistants:workflow-tool-withdraw": EDIT,
    "accounts:api-token": EVERYONE,
}

EXEMPT: set[str] = set()


def world_args(world: dict[str, Any]) -> dict[str, list[Any]]:
    from apps.assistants.services import workflow_tool_publish

    analyst, workflow = world["personas"]["analyst"], world["workflow"]
    workflow_tool_publish(actor=analyst, workflow=workflow, name="matrix_tool", description="For the matrix.")
    return {
        "assistants:workflow-tool": [workflow.slug],
        "assistants:workflow-tool-withdraw": [workflow.slug],
    }
