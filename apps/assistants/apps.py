from __future__ import annotations

from django.apps import AppConfig


class AssistantsConfig(AppConfig):
    """Workflows offered to outside agents: chosen workflows published as MCP tools, served at /mcp with the same
    permissions and audit trail as any run (apps/assistants/mcp_server.py, mounted by aios_web/asgi.py)."""

    name = "apps.assistants"
    label = "assistants"

    def ready(self) -> None:
        from apps.assistants import retention as chat_retention
        from apps.runs import retention

        retention.RUN_DEPENDENTS["assistants"] = retention.RunDependents(
            count=chat_retention.chat_messages_count_for_runs, remove=chat_retention.chat_messages_unlink_for_runs
        )
