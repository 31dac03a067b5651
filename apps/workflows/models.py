"""Workflows and versions. A published version is frozen: runs pin it, triggers refuse to change it."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone
from simple_history.models import HistoricalRecords


class Workflow(models.Model):
    """A business process that analysts automate. Its steps live in its versions."""

    name = models.CharField(max_length=120)
    slug = models.SlugField(max_length=120, unique=True)
    description = models.TextField(blank=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="owned_workflows")
    team = models.ForeignKey("accounts.Team", on_delete=models.PROTECT, null=True, blank=True, related_name="workflows")
    baseline_minutes_per_case = models.DecimalField(
        max_digits=8, decimal_places=2, default=0, help_text="Minutes a person spends per case without AIOS (for ROI)."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # Archived workflows leave the default list and cannot start runs; restoring brings them back unchanged.
    archived_at = models.DateTimeField(null=True, blank=True)
    history = HistoricalRecords()

    class Meta:
        ordering = ["name"]
        permissions = [("run_workflow", "Can start runs of the workflow")]

    def __str__(self) -> str:
        return self.name


class WorkflowVersion(models.Model):
    """One numbered version of a workflow's graph and input schema.

    `graph` is `{"steps": [...], "edges": [...]}` (apps/workflows/graph.py). A workflow has at most one
    draft, the version the builder edits: every save bumps `revision`, and a save that names an older
    revision is refused (two people never silently overwrite each other); `undo` keeps the content before
    the last save. Once `state` is published the row is immutable (a database trigger refuses UPDATE and
    DELETE), `checksum` is the SHA-256 of its canonical graph and input schema, and `note` says what changed.
    """

    class State(models.TextChoices):
        DRAFT = "draft", "Draft"
        PUBLISHED = "published", "Published"

    workflow = models.ForeignKey(Workflow, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    state = models.CharField(max_length=16, choices=State.choices, default=State.DRAFT)
    graph = models.JSONField()
    input_schema = models.JSONField()
    checksum = models.CharField(max_length=64, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    published_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    published_at = models.DateTimeField(null=True, blank=True)
    note = models.TextField(blank=True, help_text="What this version changes, written when it is published.")
    revision = models.PositiveIntegerField(default=1)
    updated_at = models.DateTimeField(default=timezone.now)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    # {"graph", "input_schema", "label", "revision"}: the draft before its last save, for one-step undo.
    undo = models.JSONField(null=True, blank=True)
    history = HistoricalRecords(excluded_fields=["undo"])

    class Meta:
        ordering = ["workflow", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["workflow", "number"], name="workflow_version_number_unique"),
            models.UniqueConstraint(fields=["workflow"], condition=models.Q(state="draft"), name="workflow_one_draft"),
        ]

    def __str__(self) -> str:
        return f"{self.workflow.name} v{self.number}"

    @property
    def is_published(self) -> bool:
        return self.state == self.State.PUBLISHED

    @property
    def steps(self) -> list[dict[str, Any]]:
        return list(self.graph.get("steps", []))


class PinnedOutput(models.Model):
    """Test data an analyst pins for one step of a workflow's draft: test runs use it instead of executing the
    step. It lives beside the draft, never in a version's graph or an export, and only test runs read it."""

    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="pinned_outputs")
    step_key = models.CharField(max_length=64)
    output = models.JSONField()
    pinned_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    pinned_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["workflow", "step_key"]
        constraints = [models.UniqueConstraint(fields=["workflow", "step_key"], name="pinned_output_unique")]

    def __str__(self) -> str:
        return f"pinned {self.step_key} of {self.workflow_id}"


class Trigger(models.Model):
    """One way work arrives for a workflow: a form page, a schedule, a signed webhook, an inbound mail address,
    another workflow's run finishing (an event), or a person's message to a chat assistant.

    `config` holds what the kind needs, checked by apps.workflows.triggers.trigger_config_clean: a form's intro
    and what-happens-next text; a schedule's `cron` (5 fields), `timezone` (IANA) and `skip_missed`; an event's
    `outcomes`; a chat assistant's `title` and `greeting`. `inputs` maps run input fields to CEL expressions over
    the firing's `payload` (empty: the payload's fields of the same names). `token` is the unguessable part of a
    webhook's URL and of an email trigger's address; `secret` is the webhook's signing secret, encrypted
    (apps.core.secrets), never shown after it is made. A paused trigger (`enabled` false) fires nothing; firing
    and its history belong to the runs app (apps.runs.triggers), which sits above this one.
    """

    class Kind(models.TextChoices):
        FORM = "form", "Form"
        SCHEDULE = "schedule", "Schedule"
        WEBHOOK = "webhook", "Webhook"
        EMAIL = "email", "Email"
        EVENT = "event", "Another workflow finishes"
        CHAT = "chat", "Chat assistant"

    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="triggers")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    name = models.CharField(max_length=120)
    enabled = models.BooleanField(default=True)
    paused_at = models.DateTimeField(null=True, blank=True)
    config = models.JSONField(default=dict, blank=True)
    inputs = models.JSONField(default=dict, blank=True)
    token = models.CharField(max_length=64, unique=True)
    secret = models.TextField(blank=True)
    # An event trigger's source: the workflow whose finished runs start this one.
    source_workflow = models.ForeignKey(
        Workflow, on_delete=models.CASCADE, null=True, blank=True, related_name="downstream_triggers"
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["workflow", "name", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["workflow", "name"], name="trigger_name_unique_per_workflow"),
        ]
        indexes = [models.Index(fields=["source_workflow", "kind", "enabled"], name="trigger_event_source_idx")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} trigger “{self.name}”"


class DraftProposal(models.Model):
    """A workflow a model drafted from an analyst's description, waiting for her review (apps/workflows/drafting.py).

    `document` is an aios/v1 document in draft form (no version block) that passed the import and publish checks
    when it was proposed; `explanations` maps each step key to the model's one or two sentences about it, and
    `problems_repaired` lists what was wrong with the model's first answer when one repair call fixed it. `calls`
    holds the provenance of the model calls made for it (their InferenceCall ids, endpoint, model and usage).
    Accepting imports the document as a new workflow's draft (`workflow`); discarding keeps the row, marked. Only
    its author, and admins, ever see it.
    """

    class State(models.TextChoices):
        PROPOSED = "proposed", "Proposed"
        ACCEPTED = "accepted", "Accepted"
        DISCARDED = "discarded", "Discarded"

    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="draft_proposals")
    team = models.ForeignKey("accounts.Team", on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    description = models.TextField()
    document = models.JSONField()
    explanations = models.JSONField(default=dict)
    summary = models.TextField(blank=True)
    problems_repaired = models.JSONField(default=list, blank=True)
    calls = models.JSONField(default=list, blank=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PROPOSED)
    workflow = models.ForeignKey(Workflow, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [models.Index(fields=["author", "-created_at"], name="draft_proposal_author_idx")]

    def __str__(self) -> str:
        return f"draft proposal {self.pk} by {self.author_id}"
