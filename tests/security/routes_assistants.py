"""Routes × personas for MCP tools (apps/assistants/views.py) and one's API tokens and password
(apps/accounts/views.py).

Everyone signed in reads the tools list (it shows only the tools of workflows they may see) and manages their own
API token; a workflow's tool page and its withdrawal are for whoever may change the workflow (its owner): those
who may only see it are told no (403), others may not know it exists (404). The MCP endpoint itself (/mcp) is not
a Django route: tests/assistants/test_mcp_endpoint.py covers it by persona over the SDK's own client.

Chat assistants (apps/assistants/chat_views.py, apps/assistants/api/chat.py): everyone signed in has the Assistant
page and lists (showing only the assistants of workflows she may run, and her own conversations); a conversation
is its owner's alone (the analyst's here): everyone else, admins and auditors included, gets 404."""

from __future__ import annotations

from typing import Any

OK, HIDDEN, FORBIDDEN, LOGIN = 200, 404, 403, 302
EVERYONE = {"analyst": OK, "reviewer": OK, "manager": OK, "outsider": OK, "auditor": OK, "anonymous": LOGIN}
EDIT = {"analyst": OK, "reviewer": FORBIDDEN, "manager": FORBIDDEN, "outsider": HIDDEN, "anonymous": LOGIN}
UNAUTHENTICATED = 401
# A conversation: its owner (the analyst's here) alone.
OWNER = {"analyst": OK, "reviewer": HIDDEN, "manager": HIDDEN, "outsider": HIDDEN, "auditor": HIDDEN}
OWNER = {**OWNER, "anonymous": LOGIN}

MATRIX: dict[str, dict[str, int]] = {
    "assistants:tools": EVERYONE,
    "assistants:workflow-tool": EDIT,
    "assistants:workflow-tool-withdraw": EDIT,
    "accounts:api-token": EVERYONE,
    # One's own password (people who sign in through the provider are told it is managed there).
    "accounts:password-change": EVERYONE,
    "chat:index": EVERYONE,
    "chat:session": OWNER,
    "api:chat-assistant-list": {**EVERYONE, "anonymous": UNAUTHENTICATED},
    "api:chat-session-list": {**EVERYONE, "anonymous": UNAUTHENTICATED},
    "api:chat-session-detail": {**OWNER, "anonymous": UNAUTHENTICATED},
    "api:chat-message-list": {**OWNER, "anonymous": UNAUTHENTICATED},
}

EXEMPT: set[str] = {
    # Revoking one of one's tokens (POST only): tests/assistants/test_tools.py covers it (another person's: 404).
    "accounts:api-token-revoke",
    # Single sign-on's start and callback: 404 unless a provider is configured; tests/accounts/test_oidc.py drives
    # them against a provider.
    "accounts:oidc-start",
    "accounts:oidc-callback",
    # POST only: tests/assistants/test_chat.py covers them by persona (start: 404 for whoever may not run the
    # workflow; a call: 404 for anyone but the conversation's owner).
    "chat:start",
    "chat:call",
    "api:chat-call-answer",
}


def world_args(world: dict[str, Any]) -> dict[str, list[Any]]:
    from apps.assistants.chat_services import chat_session_start
    from apps.assistants.services import workflow_tool_publish

    analyst, workflow = world["personas"]["analyst"], world["workflow"]
    workflow_tool_publish(actor=analyst, workflow=workflow, name="matrix_tool", description="For the matrix.")
    from tests.assistants.test_chat import chat_workflow

    session = chat_session_start(actor=analyst, trigger=chat_workflow(analyst, workflow.team)[1])
    return {
        "chat:session": [session.pk],
        "api:chat-session-detail": [session.pk],
        "api:chat-message-list": [session.pk],
        "assistants:workflow-tool": [workflow.slug],
        "assistants:workflow-tool-withdraw": [workflow.slug],
    }
