"""Approval requests: a person's decision that a `human.approval` step waits for."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class ApprovalRequest(models.Model):
    """One decision to make. `state` moves once, from pending, by a conditional update: concurrent
    deciders cannot both win, and a decided request never changes again."""

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"
        EXPIRED = "expired", "Expired"

    step_run = models.OneToOneField("runs.StepRun", on_delete=models.PROTECT, related_name="approval")
    run = models.ForeignKey("runs.Run", on_delete=models.PROTECT, related_name="approvals")
    queue = models.CharField(max_length=150, db_index=True)
    title = models.CharField(max_length=200)
    payload = models.JSONField(default=dict, blank=True)
    separation_of_duties = models.BooleanField(default=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING, db_index=True)
    due_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    reason = models.TextField(blank=True)
    edits = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return f"{self.title} (run {self.run_id})"
