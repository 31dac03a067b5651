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


class ChatSession(models.Model):
    """One person's conversation with a chat assistant (a workflow's chat trigger). Only its owner ever sees it;
    each of her messages is a run of the trigger's workflow started as her, so the assistant's tools can do only
    what she may."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_sessions")
    trigger = models.ForeignKey("workflows.Trigger", on_delete=models.CASCADE, related_name="chat_sessions")
    workflow = models.ForeignKey("workflows.Workflow", on_delete=models.CASCADE, related_name="chat_sessions")
    title = models.CharField(max_length=120)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at", "-pk"]
        indexes = [models.Index(fields=["user", "-updated_at"], name="chat_session_user_recent_idx")]

    def __str__(self) -> str:
        return f"Conversation “{self.title}”"


class ChatMessage(models.Model):
    """A message of a conversation: the person's (`user`) or the assistant's answer to it (`assistant`). An
    answer is bound to the run that produces it; its `text` is filled from the run's output once the run has
    finished (apps/assistants/chat_selectors.py reads it then), empty until then."""

    class Role(models.TextChoices):
        USER = "user", "You"
        ASSISTANT = "assistant", "Assistant"

    session = models.ForeignKey(ChatSession, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=16, choices=Role.choices)
    text = models.TextField(blank=True)
    run = models.ForeignKey("runs.Run", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "pk"]
        indexes = [models.Index(fields=["session", "created_at"], name="chat_message_session_idx")]

    def __str__(self) -> str:
        return f"{self.get_role_display()}: {self.text[:40]}"
