"""A workflow published as an MCP tool for outside agents (Claude Desktop, an IDE, another company's agent)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models.functions import Lower

# What MCP clients accept in a tool name across hosts; the first character a letter so no host reads it as a
# number or an option.
TOOL_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]*$"
TOOL_NAME_MAX_LENGTH = 64


class PublishedTool(models.Model):
    """One workflow offered as an MCP tool under `name`, with a `description` written for the agents that choose
    tools by it. A call runs the workflow's newest published version as the token's user, who must be allowed
    to run the workflow; a paused tool (`enabled` off) is offered to nobody. At most one tool per workflow."""

    workflow = models.OneToOneField("workflows.Workflow", on_delete=models.CASCADE, related_name="published_tool")
    name = models.CharField(max_length=TOOL_NAME_MAX_LENGTH)
    description = models.TextField()
    enabled = models.BooleanField(default=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            # Agents see names side by side, and some hosts fold case: "Triage" and "triage" would be one tool.
            models.UniqueConstraint(Lower("name"), name="assistants_tool_name_unique_ci"),
        ]

    def __str__(self) -> str:
        return f"MCP tool {self.name}"
