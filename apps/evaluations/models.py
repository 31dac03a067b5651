"""Evaluation suites: cases with expected outputs per field, reports of a draft run against them, and the record
of every publish an admin let through over a failing suite."""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models


class EvaluationSuite(models.Model):
    """A workflow's evaluation suite: what is checked (one step's output, or the run's output when `step_key` is
    empty) and the pass criteria. While `enabled`, a version of the workflow publishes only when the newest
    report on exactly its content passed (or an admin overrides, with a reason)."""

    workflow = models.OneToOneField("workflows.Workflow", on_delete=models.CASCADE, related_name="evaluation_suite")
    step_key = models.CharField(
        max_length=64, blank=True, help_text="The step whose output is checked; empty: the run's."
    )
    # Percent of checked fields, over every case, that must match.
    min_accuracy = models.DecimalField(max_digits=5, decimal_places=2, default=Decimal("90"))
    # {field: percent}: fields that must reach their own accuracy as well.
    field_min_accuracy = models.JSONField(default=dict, blank=True)
    require_schema_valid = models.BooleanField(default=True)
    max_cost_per_case = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    # The 95th percentile of the cases' run times (a single slow case in twenty is tolerated).
    max_latency_p95_seconds = models.DecimalField(max_digits=9, decimal_places=2, null=True, blank=True)
    enabled = models.BooleanField(default=True)
    # When an admin last saved the settings: the cases that existed then are the suite's established cases while
    # no report let the published version through (see apps.evaluations.selectors.suite_baseline).
    admin_reviewed_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"Evaluation suite of {self.workflow_id}"


class EvaluationCase(models.Model):
    """One case: run inputs and the output expected from the checked step, field by field (a field not named is
    not checked)."""

    class Source(models.TextChoices):
        MANUAL = "manual", "Written by hand"
        CORRECTIONS = "corrections", "From a reviewer's correction"
        RECORDED_RUN = "recorded_run", "From a recorded run"

    suite = models.ForeignKey(EvaluationSuite, on_delete=models.CASCADE, related_name="cases")
    name = models.CharField(max_length=120)
    inputs = models.JSONField(default=dict)
    expected = models.JSONField(default=dict)
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.MANUAL)
    # What the case came from: "decision 12" for a correction, "run 40" for a recorded run.
    source_reference = models.CharField(max_length=64, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "pk"]
        constraints = [models.UniqueConstraint(fields=["suite", "name"], name="evaluation_case_name_unique")]

    def __str__(self) -> str:
        return self.name


class EvaluationReport(models.Model):
    """One run of a suite on a workflow's draft: the content it ran on (the draft's checksum), the criteria and
    cases as they were, who started it, and, once every case's test run finished, the scores."""

    class State(models.TextChoices):
        RUNNING = "running", "Running"
        PASSED = "passed", "Passed"
        FAILED = "failed", "Failed"
        ERROR = "error", "Could not finish"

    FINISHED = (State.PASSED, State.FAILED, State.ERROR)

    suite = models.ForeignKey(EvaluationSuite, on_delete=models.CASCADE, related_name="reports")
    workflow = models.ForeignKey("workflows.Workflow", on_delete=models.CASCADE, related_name="evaluation_reports")
    version = models.ForeignKey("workflows.WorkflowVersion", on_delete=models.CASCADE, related_name="+")
    version_number = models.PositiveIntegerField()
    draft_revision = models.PositiveIntegerField()
    # graph_checksum of the draft's graph and input schema when the report started: the gate's key.
    content_checksum = models.CharField(max_length=64, db_index=True)
    # A digest of the criteria and cases it ran with: a report on a suite that changed since proves nothing.
    suite_checksum = models.CharField(max_length=64)
    step_key = models.CharField(max_length=64, blank=True)
    criteria = models.JSONField(default=dict)
    state = models.CharField(max_length=16, choices=State.choices, default=State.RUNNING, db_index=True)
    started_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    # Publishing through the suite: publish as `started_by`, with this note, when the report passes.
    publish_requested = models.BooleanField(default=False)
    publish_requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    publish_note = models.TextField(blank=True)
    publish_outcome = models.TextField(blank=True)
    published_version = models.ForeignKey(
        "workflows.WorkflowVersion", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # {"cases", "cases_passed", "fields_checked", "fields_matched", "accuracy", "field_accuracy": {field: pct},
    #  "schema_invalid", "cost_total", "cost_max", "latency_p50_ms", "latency_p95_ms"}
    totals = models.JSONField(default=dict, blank=True)
    # [{"key", "label", "limit", "actual", "passed"}], one per criterion.
    outcomes = models.JSONField(default=list, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [models.Index(fields=["workflow", "content_checksum", "-created_at"])]

    def __str__(self) -> str:
        return f"Evaluation report {self.pk}"

    @property
    def is_finished(self) -> bool:
        return self.state in self.FINISHED


class EvaluationResult(models.Model):
    """One case of a report: its test run, the checked output, field by field expected against actual, and
    whether the case passed, with a reason in words."""

    report = models.ForeignKey(EvaluationReport, on_delete=models.CASCADE, related_name="results")
    case = models.ForeignKey(EvaluationCase, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    case_name = models.CharField(max_length=120)
    inputs = models.JSONField(default=dict)
    expected = models.JSONField(default=dict)
    # Set once, by a conditional update, when the case's run starts (after the report's transaction commits);
    # empty while it has not started, and for good when it could not (`start_error` says why).
    run = models.ForeignKey("runs.Run", on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    start_error = models.TextField(blank=True)
    output = models.JSONField(null=True, blank=True)
    # [{"field", "expected", "actual", "match"}]
    fields = models.JSONField(default=list, blank=True)
    schema_valid = models.BooleanField(null=True)
    cost = models.DecimalField(max_digits=14, decimal_places=6, default=Decimal("0"))
    latency_ms = models.FloatField(null=True, blank=True)
    passed = models.BooleanField(null=True)
    reason = models.TextField(blank=True)

    class Meta:
        ordering = ["case_name", "pk"]

    def __str__(self) -> str:
        return f"{self.case_name} in report {self.report_id}"


class EvaluationGateOverride(models.Model):
    """An admin published a version whose suite had not passed on its content: who, why, and over which report
    (none when the suite never ran on it)."""

    version = models.OneToOneField("workflows.WorkflowVersion", on_delete=models.CASCADE, related_name="+")
    report = models.ForeignKey(EvaluationReport, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    reason = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"Override of the evaluation gate for version {self.version_id}"


class EvaluationGatePass(models.Model):
    """A version went through the gate on a passing report: the evidence an auditor reads beside the version."""

    version = models.OneToOneField("workflows.WorkflowVersion", on_delete=models.CASCADE, related_name="+")
    report = models.ForeignKey(EvaluationReport, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"Version {self.version_id} passed the evaluation gate on report {self.report_id}"
