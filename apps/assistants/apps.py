from __future__ import annotations

from django.apps import AppConfig


class AssistantsConfig(AppConfig):
    """Workflows offered to outside agents: chosen workflows published as MCP tools, served at /mcp with the same
    permissions and audit trail as any run (apps/assistants/mcp_server.py, mounted by aios_web/asgi.py)."""

    name = "apps.assistants"
    label = "assistants"
