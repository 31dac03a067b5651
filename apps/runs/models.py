"""Runs and step runs: the durable record of every execution."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Run(models.Model):
    """One execution of a pinned workflow version. Its status is derived from its step runs' states."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    workflow = models.ForeignKey("workflows.Workflow", on_delete=models.PROTECT, related_name="runs")
    version = models.ForeignKey("workflows.WorkflowVersion", on_delete=models.PROTECT, related_name="runs")
    inputs = models.JSONField(default=dict)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True)
    trigger = models.CharField(max_length=16, default="manual")
    initiator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="runs"
    )
    idempotency_key = models.CharField(max_length=128, blank=True)
    output = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    total_prompt_tokens = models.PositiveIntegerField(default=0)
    total_generated_tokens = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["initiator", "idempotency_key"],
                condition=~models.Q(idempotency_key=""),
                name="run_idempotency_key_unique",
            )
        ]
        indexes = [models.Index(fields=["workflow", "-created_at"])]

    def __str__(self) -> str:
        return f"Run {self.pk} of {self.workflow_id}"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None


class StepRun(models.Model):
    """One step of one run.

    State machine: pending → queued → running → succeeded | failed | skipped | cancelled, plus waiting.
    Every transition is a conditional UPDATE on the expected current state, so repeating one is a no-op.
    A worker owns a running step through its lease and `fencing_token`; a result commits only with the
    current token, so a stale worker's late result is refused.
    """

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        WAITING = "waiting", "Waiting"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        SKIPPED = "skipped", "Skipped"
        CANCELLED = "cancelled", "Cancelled"

    FINISHED = (State.SUCCEEDED, State.FAILED, State.SKIPPED, State.CANCELLED)

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="step_runs")
    step_key = models.CharField(max_length=64)
    step_type = models.CharField(max_length=64)
    name = models.CharField(max_length=120, blank=True)
    position = models.PositiveIntegerField()
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    attempt = models.PositiveIntegerField(default=0)
    fencing_token = models.PositiveBigIntegerField(default=0)
    lease_owner = models.CharField(max_length=200, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    input = models.JSONField(null=True, blank=True)
    output = models.JSONField(null=True, blank=True)
    usage = models.JSONField(default=dict, blank=True)
    streamed_text = models.TextField(blank=True)
    error = models.TextField(blank=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["run", "position"]
        constraints = [models.UniqueConstraint(fields=["run", "step_key"], name="step_run_key_unique")]

    def __str__(self) -> str:
        return f"{self.step_key} of run {self.run_id}"

    @property
    def is_finished(self) -> bool:
        return self.state in self.FINISHED

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None
