"""KPI inputs that managers edit, the digest subscriptions, and the rollup tables the dashboards read.

The rollup tables are derived data: `apps.dashboards.rollups` rebuilds a day's rows from the raw run, approval and
inference tables in one transaction, so they can be dropped and rebuilt at any time. Durations are kept as log-scale
histograms (`apps.dashboards.histograms`): integer arrays that add up across rows, so percentiles merge over any
range of days, workflows and versions.
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models


def _histogram() -> ArrayField:
    return ArrayField(models.BigIntegerField(), default=list, blank=True)


class KpiSettings(models.Model):
    """The KPI inputs that hold for every workflow: one row (pk 1), created on first read.

    Also carries the dashboards' two permissions, held by roles (apps/accounts/roles.py)."""

    SINGLETON_PK = 1

    reviewer_hourly_rate = models.DecimalField(
        max_digits=10,
        decimal_places=2,
        default=Decimal("0"),
        validators=[MinValueValidator(Decimal("0"))],
        help_text="What an hour of a reviewer's time costs, loaded (salary, overheads).",
    )
    currency = models.CharField(max_length=3, default="EUR", help_text="ISO 4217 code, e.g. EUR, USD, GBP.")
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )

    class Meta:
        verbose_name = "KPI settings"
        verbose_name_plural = "KPI settings"
        default_permissions = ()
        permissions = [
            ("view_dashboards", "Can read the KPI dashboards"),
            ("change_kpi_inputs", "Can change the KPI inputs (rates, baselines, factors)"),
        ]

    def __str__(self) -> str:
        return f"KPI settings ({self.reviewer_hourly_rate} {self.currency}/h)"


class WorkflowKpiInput(models.Model):
    """Per workflow: how much of the baseline manual time AIOS really saves (realisation, UiPath's idea: a case
    that AIOS finishes still leaves some checking), and what building the automation cost once (for payback).
    The baseline minutes per case live on Workflow itself."""

    workflow = models.OneToOneField("workflows.Workflow", on_delete=models.CASCADE, related_name="kpi_input")
    realisation_percent = models.DecimalField(
        max_digits=5,
        decimal_places=2,
        default=Decimal("100"),
        validators=[MinValueValidator(Decimal("0")), MaxValueValidator(Decimal("100"))],
    )
    build_cost = models.DecimalField(
        max_digits=14,
        decimal_places=2,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal("0"))],
        help_text="One-off cost of building the automation (for payback); empty when unknown.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(realisation_percent__gte=0, realisation_percent__lte=100),
                name="workflow_kpi_realisation_range",
            )
        ]

    def __str__(self) -> str:
        return f"KPI inputs of workflow {self.workflow_id}"


class EndpointKpiInput(models.Model):
    """Per model endpoint: whether it runs on our own GPU, and what an hour of that GPU costs. A self-hosted
    endpoint's calls cost GPU-seconds × hourly price; any other endpoint's cost tokens × its price per 1k."""

    endpoint = models.OneToOneField("inference.ModelEndpoint", on_delete=models.CASCADE, related_name="kpi_input")
    self_hosted = models.BooleanField(default=False)
    gpu_hourly_price = models.DecimalField(
        max_digits=10,
        decimal_places=4,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal("0"))],
    )
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"KPI inputs of endpoint {self.endpoint_id}"


class DigestSubscription(models.Model):
    """A manager's weekly KPI digest: on or off, the filter it covers (`{"team": id, "workflow": id}`, the
    period is always the last 7 days), and when it was last sent (the digest task claims a row by a conditional
    update on `last_sent_at`, so two beats never mail twice)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="kpi_digest")
    weekly = models.BooleanField(default=True)
    filter = models.JSONField(default=dict, blank=True)
    last_sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"KPI digest of user {self.user_id}"


class RollupState(models.Model):
    """The rollup job's bookkeeping, one row (pk 1): the watermark up to which raw changes are rolled up, and a
    day from which everything must still be rebuilt (the first backfill, or a rebuild asked for through
    RollupRebuildRequest; the job moves it forward as each day commits, so a crash redoes only the days left).

    Only the job writes this row, and only in short transactions: a job claims it by a conditional update of
    `lease_until`, so two overlapping beats never rebuild at once, and nothing else ever waits on the job."""

    SINGLETON_PK = 1

    watermark = models.DateTimeField(null=True, blank=True)
    last_call_id = models.BigIntegerField(default=0)
    # Days that held open work (runs, approvals) at the last refresh: rebuilt again next time, since their runs
    # may have finished in between without leaving a recent creation time behind.
    open_days = models.JSONField(default=list, blank=True)
    rebuild_from = models.DateField(null=True, blank=True)
    last_run_at = models.DateTimeField(null=True, blank=True)
    last_days = models.PositiveIntegerField(default=0)
    last_runs = models.PositiveIntegerField(default=0)
    last_seconds = models.FloatField(default=0)
    # Set while a job runs and renewed after every day it rebuilds; a job that died leaves it to run out.
    lease_until = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"Rollups up to {self.watermark}"


class RollupRebuildRequest(models.Model):
    """ "Rebuild every day from `from_day`": written when an input folded into stored rows changes (an endpoint's GPU
    price). A plain insert, so the web request that changes the input never waits on a running rollup job; the
    next job takes the requests that exist when it starts and deletes them once it has folded them in."""

    from_day = models.DateField()
    reason = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"Rebuild the rollups from {self.from_day}"


class RollupFreeze(models.Model):
    """The last day whose raw records the retention purge has cut (one row, pk 1; apps/runs/retention.py).

    A rollup day up to `frozen_through` keeps its rows as they stand: rebuilding it would count only what is
    left of its runs, approvals and calls, and the KPIs of past months would shrink. The purge moves it forward
    (never back) in each batch's transaction, before the batch's rows go; `rollup_day_rebuild` skips such days.
    """

    SINGLETON_PK = 1

    frozen_through = models.DateField()

    def __str__(self) -> str:
        return f"Rollups frozen through {self.frozen_through}"


class WorkflowDayRollup(models.Model):
    """Cases of one workflow version that arrived on `day` (their first run's creation day, server zone), and
    everything about them: outcomes, reviewers' decisions, SLA, costs, human time, and duration histograms.

    A case counts once, on its arrival day, with all its figures (see apps.dashboards.rollups for what a case is
    and how restarts count)."""

    day = models.DateField()
    workflow = models.ForeignKey("workflows.Workflow", on_delete=models.CASCADE, related_name="+")
    version = models.ForeignKey("workflows.WorkflowVersion", on_delete=models.CASCADE, related_name="+")
    cases = models.PositiveIntegerField(default=0)
    completed = models.PositiveIntegerField(default=0)
    straight_through = models.PositiveIntegerField(default=0)
    escalated = models.PositiveIntegerField(default=0)
    escalated_completed = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    incidents = models.PositiveIntegerField(default=0)
    failed_or_incident = models.PositiveIntegerField(default=0)
    cancelled = models.PositiveIntegerField(default=0)
    restarts = models.PositiveIntegerField(default=0)
    approvals = models.PositiveIntegerField(default=0)
    decisions = models.PositiveIntegerField(default=0)
    overridden = models.PositiveIntegerField(default=0)
    audit_decisions = models.PositiveIntegerField(default=0)
    audit_agreed = models.PositiveIntegerField(default=0)
    sla_due = models.PositiveIntegerField(default=0)
    sla_breached = models.PositiveIntegerField(default=0)
    prompt_tokens = models.BigIntegerField(default=0)
    generated_tokens = models.BigIntegerField(default=0)
    model_calls = models.PositiveIntegerField(default=0)
    cost_model = models.DecimalField(max_digits=16, decimal_places=6, default=Decimal("0"))
    cost_gpu = models.DecimalField(max_digits=16, decimal_places=6, default=Decimal("0"))
    gpu_seconds = models.FloatField(default=0)
    human_seconds = models.FloatField(default=0)
    human_seconds_completed = models.FloatField(default=0)
    hist_total = _histogram()
    hist_machine = _histogram()
    hist_queue = _histogram()
    hist_human = _histogram()
    built_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["day", "workflow", "version"], name="workflow_day_rollup_unique")
        ]
        indexes = [models.Index(fields=["workflow", "day"], name="workflow_day_rollup_wf_idx")]

    def __str__(self) -> str:
        return f"{self.day} workflow {self.workflow_id} v{self.version_id}"


class QueueDayRollup(models.Model):
    """Approval items of one queue opened on `day`, per reviewer who decided them (`reviewer` null: not decided
    yet, or expired): decisions, handling time, breaches, and histograms of time per item and wait."""

    day = models.DateField()
    queue = models.ForeignKey("approvals.ApprovalQueue", on_delete=models.CASCADE, related_name="+")
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    workflow = models.ForeignKey("workflows.Workflow", on_delete=models.CASCADE, null=True, related_name="+")
    opened = models.PositiveIntegerField(default=0)
    decided = models.PositiveIntegerField(default=0)
    approved = models.PositiveIntegerField(default=0)
    rejected = models.PositiveIntegerField(default=0)
    edited = models.PositiveIntegerField(default=0)
    expired = models.PositiveIntegerField(default=0)
    sla_due = models.PositiveIntegerField(default=0)
    sla_breached = models.PositiveIntegerField(default=0)
    human_seconds = models.FloatField(default=0)
    hist_time_per_item = _histogram()
    hist_wait = _histogram()
    built_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["day", "queue", "reviewer", "workflow"],
                name="queue_day_rollup_unique",
                nulls_distinct=False,
            )
        ]
        indexes = [models.Index(fields=["queue", "day"], name="queue_day_rollup_queue_idx")]

    def __str__(self) -> str:
        return f"{self.day} queue {self.queue_id} reviewer {self.reviewer_id}"


class EndpointDayRollup(models.Model):
    """Calls to one model endpoint on `day` (when the call began), per workflow whose run made them (`workflow`
    null: calls outside any run, e.g. knowledge embeddings): tokens, errors by kind, cost, GPU-seconds, and
    histograms of latency and time to first token."""

    day = models.DateField()
    endpoint = models.ForeignKey("inference.ModelEndpoint", on_delete=models.CASCADE, related_name="+")
    workflow = models.ForeignKey("workflows.Workflow", on_delete=models.CASCADE, null=True, related_name="+")
    calls = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    errors_by_kind = models.JSONField(default=dict, blank=True)
    prompt_tokens = models.BigIntegerField(default=0)
    generated_tokens = models.BigIntegerField(default=0)
    cost_tokens = models.DecimalField(max_digits=16, decimal_places=6, default=Decimal("0"))
    cost_gpu = models.DecimalField(max_digits=16, decimal_places=6, default=Decimal("0"))
    gpu_seconds = models.FloatField(default=0)
    hist_latency = _histogram()
    hist_ttft = _histogram()
    built_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["day", "endpoint", "workflow"], name="endpoint_day_rollup_unique", nulls_distinct=False
            )
        ]
        indexes = [models.Index(fields=["endpoint", "day"], name="endpoint_day_rollup_ep_idx")]

    def __str__(self) -> str:
        return f"{self.day} endpoint {self.endpoint_id}"
