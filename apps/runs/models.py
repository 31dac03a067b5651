"""Runs and step runs: the durable record of every execution."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models

from apps.core.telemetry.tracing import traceparent_for_new_run
from apps.steps.agent_keys import TOOL_CALL_MARK


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
    # SHA-256 of the workflow and inputs of the request that used `idempotency_key`: a repeat with another
    # body is refused instead of silently answered with this run.
    request_hash = models.CharField(max_length=64, blank=True)
    output = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    restarted_from = models.ForeignKey("self", on_delete=models.PROTECT, null=True, blank=True, related_name="restarts")
    restart_step_key = models.CharField(max_length=64, blank=True)
    parent_step_run = models.ForeignKey(
        "runs.StepRun", on_delete=models.PROTECT, null=True, blank=True, related_name="child_runs"
    )
    # For a child run of `flow.foreach`: the position of its item in the list.
    item_index = models.PositiveIntegerField(null=True, blank=True)
    total_prompt_tokens = models.PositiveIntegerField(default=0)
    total_generated_tokens = models.PositiveIntegerField(default=0)
    total_cost = models.DecimalField(max_digits=14, decimal_places=6, default=0)
    # The W3C trace context the run was created in (empty while tracing is off): every step's span, in whatever
    # worker and however late it runs, is a child of it, so a run is one trace across processes and the
    # database hand-off (apps/core/telemetry/tracing.py).
    traceparent = models.CharField(max_length=55, blank=True, default=traceparent_for_new_run, editable=False)

    class Mode(models.TextChoices):
        LIVE = "live", "Live"
        REPLAY = "replay", "Replay of recorded model calls"
        WHAT_IF = "what_if", "What-if re-run"
        TEST = "test", "Test of a draft"

    mode = models.CharField(max_length=16, choices=Mode.choices, default=Mode.LIVE)
    # Replay: the run whose recorded model calls answer this run's calls (and whose recorded outside-world
    # results stand in for its side-effecting steps). What-if runs link their original by restarted_from.
    replay_of = models.ForeignKey("self", on_delete=models.PROTECT, null=True, blank=True, related_name="replays")
    # What-if: per step key, config values that replace the pinned version's for this run only
    # ({"extract": {"prompt": "...", "model": "large"}}); the version itself stays immutable.
    overrides = models.JSONField(default=dict, blank=True)
    # Test runs execute the draft as it was when the test started, never its later edits: a copy of its graph.
    # Every other run executes its version's graph (published, immutable).
    graph_snapshot = models.JSONField(null=True, blank=True)
    # Test runs only: {"pinned": {step key: output}, "allow_calls": [step keys], "target": step key or None}.
    # Pinned outputs stand in for those steps; steps that reach the outside world, ask people or wait are
    # simulated unless listed in allow_calls. Nothing here can reach a published version or a live run.
    test_settings = models.JSONField(default=dict, blank=True)
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
        indexes = [
            models.Index(fields=["workflow", "-created_at"]),
            # The retention purge's candidates (apps/runs/retention.py, `purge_candidates`): a daily purge finds
            # its few runs here instead of walking back through every newer run. The status list is Run.FINISHED
            # (the purge's filter must imply this condition for the planner to use the index).
            models.Index(
                fields=["finished_at"],
                condition=models.Q(parent_step_run__isnull=True, status__in=["succeeded", "failed", "cancelled"]),
                name="run_finished_top_level_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"Run {self.pk} of {self.workflow_id}"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    @property
    def is_test(self) -> bool:
        return self.mode == self.Mode.TEST

    @property
    def graph(self) -> dict[str, Any]:
        """The graph this run executes: its test snapshot, else its pinned version's."""
        return self.graph_snapshot if self.graph_snapshot is not None else self.version.graph

    @property
    def steps(self) -> list[dict[str, Any]]:
        return list(self.graph.get("steps", []))

    def step_definition(self, step_key: str) -> dict[str, Any]:
        """The step as this run executes it: the graph's definition with a what-if run's config overrides
        merged over its config (the version itself never changes). KeyError for a step it does not have."""
        definition = next((step for step in self.steps if step["key"] == step_key), None)
        if definition is None:
            raise KeyError(step_key)
        override = (self.overrides or {}).get(step_key)
        if override:
            definition = {**definition, "config": {**definition.get("config", {}), **override}}
        return definition

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
    # Why a waiting step waits: "retry", "timer", "approval", "subworkflow", "incident" (empty otherwise).
    waiting_for = models.CharField(max_length=16, blank=True)
    # The branch a logic step took, copied from its output for the engine's decision.
    branch = models.CharField(max_length=64, blank=True)
    attempt = models.PositiveIntegerField(default=0)
    # Times the sweeper took the step back from a worker whose lease expired; capped, then an incident.
    restarts = models.PositiveIntegerField(default=0)
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
    reused_from = models.ForeignKey(
        "self",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        help_text="The step run whose recorded output a restarted run reused instead of executing.",
    )
    # A tool call an agent step made: the agent's step run, and the step definition the call runs (the graph
    # does not hold it). Its key is "<agent key>~<n>"; graph keys are identifiers, so the two never meet.
    parent = models.ForeignKey("self", on_delete=models.CASCADE, null=True, blank=True, related_name="tool_calls")
    definition = models.JSONField(null=True, blank=True)
    # An agent step's turns so far: [{"turn", "text", "calls": [tool call keys], "finish", "at"}].
    transcript = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["run", "position"]
        constraints = [models.UniqueConstraint(fields=["run", "step_key"], name="step_run_key_unique")]
        indexes = [
            models.Index(fields=["state", "lease_expires_at"], name="step_run_lease_idx"),
            models.Index(fields=["state", "queued_at"], name="step_run_queued_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.step_key} of run {self.run_id}"

    @property
    def is_finished(self) -> bool:
        return self.state in self.FINISHED

    @property
    def is_tool_call(self) -> bool:
        return TOOL_CALL_MARK in self.step_key

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None


class StepResult(models.Model):
    """The immutable record that a step completed, written once in the transaction that completed it.

    Unique per (run, step key): a second completion of the same step, however it came about, cannot commit.
    """

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="results")
    step_key = models.CharField(max_length=64)
    step_run = models.OneToOneField(StepRun, on_delete=models.CASCADE, related_name="result")
    outcome = models.CharField(max_length=16)  # succeeded | failed | skipped
    output = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    attempt = models.PositiveIntegerField()
    fencing_token = models.PositiveBigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "step_key"], name="step_result_unique")]

    def __str__(self) -> str:
        return f"{self.step_key} of run {self.run_id}: {self.outcome}"


class Outbox(models.Model):
    """A task to send to Celery, written in the same transaction as the state change that calls for it.

    Relayed right after commit; the sweeper relays whatever is left (a crash between commit and send, a
    broker that was down). Sending twice is harmless: the task's claim turns a duplicate into a no-op.
    """

    task = models.CharField(max_length=64)
    queue = models.CharField(max_length=32)
    args = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    relayed_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)

    class Meta:
        indexes = [
            models.Index(
                fields=["created_at"], condition=models.Q(relayed_at__isnull=True), name="outbox_unrelayed_idx"
            )
        ]

    def __str__(self) -> str:
        return f"{self.task}{self.args} to {self.queue}"


class Timer(models.Model):
    """Something due at `fire_at`: a retry, a delay, a step or run timeout, an approval's due time.

    Timers are rows, never long Celery countdowns; the sweeper fires due ones exactly once (SKIP LOCKED
    plus a conditional update on `fired_at`).
    """

    class Kind(models.TextChoices):
        RETRY = "retry", "Retry a step"
        DELAY = "delay", "End a delay"
        STEP_TIMEOUT = "step_timeout", "Step timeout"
        RUN_TIMEOUT = "run_timeout", "Run timeout"
        APPROVAL_DUE = "approval_due", "Approval due"

    kind = models.CharField(max_length=16, choices=Kind.choices)
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="timers")
    step_run = models.ForeignKey(StepRun, on_delete=models.CASCADE, null=True, blank=True, related_name="timers")
    fencing_token = models.PositiveBigIntegerField(default=0)
    fire_at = models.DateTimeField()
    fired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["fire_at"], condition=models.Q(fired_at__isnull=True), name="timer_due_idx")]

    def __str__(self) -> str:
        return f"{self.kind} at {self.fire_at:%Y-%m-%d %H:%M:%S}"


class Incident(models.Model):
    """A step the engine gave up on (restart cap reached, uncertain side effect): a person decides."""

    class Resolution(models.TextChoices):
        RETRY = "retry", "Retried"
        SKIP = "skip", "Skipped with a supplied output"
        ABORT = "abort", "Run aborted"

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="incidents")
    step_run = models.ForeignKey(StepRun, on_delete=models.CASCADE, related_name="incidents")
    reason = models.TextField()
    opened_at = models.DateTimeField(auto_now_add=True)
    resolution = models.CharField(max_length=8, choices=Resolution.choices, blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-opened_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["step_run"], condition=models.Q(resolved_at__isnull=True), name="one_open_incident_per_step"
            )
        ]

    def __str__(self) -> str:
        return f"Incident #{self.pk} on {self.step_run}"

    @property
    def is_open(self) -> bool:
        return self.resolved_at is None


class EffectRecord(models.Model):
    """The effect ledger: intent and outcome of every side-effecting step, keyed by its idempotency key.

    The intent commits before the outside call; the outcome after it. An intent without an outcome means
    an attempt died mid-call, so the effect may or may not have happened.
    """

    class State(models.TextChoices):
        INTENT = "intent", "Sent, outcome unknown"
        APPLIED = "applied", "Applied"
        FAILED = "failed", "Failed (not applied)"

    idempotency_key = models.CharField(max_length=64, unique=True)
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="effects")
    step_key = models.CharField(max_length=64)
    state = models.CharField(max_length=8, choices=State.choices, default=State.INTENT)
    attempts = models.PositiveIntegerField(default=0)
    first_at = models.DateTimeField(auto_now_add=True)
    last_at = models.DateTimeField(auto_now=True)
    outcome = models.TextField(blank=True)

    class Meta:
        # One row per step, whatever key it holds: workers of two releases side by side in a rolling upgrade may
        # compute a step's key by different rules, and two first attempts must still end on one row (the later
        # insert waits for the earlier, fails, and reads its key) rather than send one effect under two keys.
        constraints = [models.UniqueConstraint(fields=["run", "step_key"], name="effect_one_per_step")]

    def __str__(self) -> str:
        return f"{self.step_key} of run {self.run_id}: {self.state}"


class InputDocument(models.Model):
    """A PDF uploaded as a run input: the bytes as received, and the text read from them page by page.

    `text` is every page's text joined by PAGE_SEPARATOR; `page_offsets[n]` is `[start, end)` of page n + 1 in
    it, so a character range of the text (an extraction's evidence) maps back to its pages. Immutable once
    stored: a run's input names a document by id, and its text is what the run's steps read. One row per
    uploader and content: uploading the same file again returns the stored row.
    """

    # Blank lines, not a form feed: model steps drop control characters from their source, and the source
    # must stay the document's text for evidence offsets to point into it.
    PAGE_SEPARATOR = "\n\n\n"

    name = models.CharField(max_length=255)
    content_type = models.CharField(max_length=100, default="application/pdf")
    size = models.PositiveBigIntegerField()
    sha256 = models.CharField(max_length=64)
    data = models.BinaryField()
    page_count = models.PositiveIntegerField()
    text = models.TextField()
    page_offsets = models.JSONField(default=list)
    uploaded_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["uploaded_by", "sha256"], name="input_document_uploader_sha256_unique")
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.page_count} page{'s' if self.page_count != 1 else ''})"


class RunDocument(models.Model):
    """That a document field of a run's input names a stored document. Written by the database as the run is
    inserted (a trigger, migration 0012), so no code path that creates runs can leave one out.

    The retention purge asks which documents any run still names: this answers through an index instead of
    reading every run's input, and its foreign key stops a named document from being deleted.
    """

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="+", db_index=False)
    document = models.ForeignKey(InputDocument, on_delete=models.PROTECT, related_name="+")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "document"], name="run_document_unique")]

    def __str__(self) -> str:
        return f"Run {self.run_id} names document {self.document_id}"


class TriggerFiring(models.Model):
    """One firing of a trigger, whatever came of it: a run started, a repeat answered with the run it already
    started (duplicate), a payload or request refused, a scheduled time skipped, or a failure. Written in the
    transaction that decided the outcome, beside its audit event; never changed afterwards."""

    class Outcome(models.TextChoices):
        STARTED = "started", "Run started"
        DUPLICATE = "duplicate", "Repeat: no new run"
        REFUSED = "refused", "Refused"
        SKIPPED = "skipped", "Skipped"
        FAILED = "failed", "Failed"

    trigger = models.ForeignKey("workflows.Trigger", on_delete=models.CASCADE, related_name="firings")
    at = models.DateTimeField(db_index=True)
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    detail = models.CharField(max_length=500, blank=True)
    run = models.ForeignKey(Run, on_delete=models.SET_NULL, null=True, blank=True, related_name="trigger_firings")
    # What identifies the firing at its source: a schedule's slot, a mail's Message-ID digest, an A run id.
    key = models.CharField(max_length=128, blank=True)

    class Meta:
        ordering = ["-at", "-pk"]
        indexes = [models.Index(fields=["trigger", "-at"], name="trigger_firing_recent_idx")]

    def __str__(self) -> str:
        return f"{self.outcome} at {self.at:%Y-%m-%d %H:%M:%S}"


class ScheduleTimer(models.Model):
    """The next time a schedule trigger is due: one unfired row per enabled schedule.

    A run's `Timer` belongs to a run and fires under its lock; a schedule belongs to no run, so it has rows of
    its own. The sweeper claims a due row (SKIP LOCKED plus a conditional update on `fired_at`) in the same
    transaction that starts the run and arms the next row, so a restart of beat or workers never fires a slot
    twice; `unique(trigger, fire_at)` makes a second row for the same slot impossible.
    """

    trigger = models.ForeignKey("workflows.Trigger", on_delete=models.CASCADE, related_name="schedule_timers")
    fire_at = models.DateTimeField()
    fired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["trigger", "fire_at"], name="schedule_timer_slot_unique")]
        indexes = [
            models.Index(fields=["fire_at"], condition=models.Q(fired_at__isnull=True), name="schedule_timer_due_idx")
        ]

    def __str__(self) -> str:
        return f"schedule {self.trigger_id} at {self.fire_at:%Y-%m-%d %H:%M}"


class WebhookReceipt(models.Model):
    """A signed webhook request that passed its signature check, kept while its timestamp is inside the replay
    window (`expires_at`; the sweeper deletes it after).

    `digest` identifies the exact request: the SHA-256 of its signature, which covers the timestamp, the
    Idempotency-Key and the body. `unique(trigger, digest)` makes a repeat of a captured request meet the first
    one's row, whatever else changed, so it is answered with the run the first one started and starts no other.
    """

    trigger = models.ForeignKey("workflows.Trigger", on_delete=models.CASCADE, related_name="webhook_receipts")
    digest = models.CharField(max_length=64)
    received_at = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)
    run = models.ForeignKey(Run, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["trigger", "digest"], name="webhook_receipt_unique")]

    def __str__(self) -> str:
        return f"webhook {self.trigger_id} request {self.digest[:12]}"


# --- email triggers that read a mailbox (apps/runs/mailbox_poll.py) ---------------------------------------------
class MailboxPoll(models.Model):
    """Where polling an email trigger's mailbox stands: one row per email trigger that names a mailbox
    connection, made by the first poll.

    `uidvalidity` and `last_uid` are the cursor: every message with a UID up to `last_uid` was handled (fired and
    marked \\Seen), so a poll asks only for newer ones; they are valid for `source` (the connection, host, user
    and folder) and the server's UIDVALIDITY, and start over when either changes. A poll claims the row by a
    conditional update that sets `polling_until` (a lease) and bumps `lease_token`; cursor and outcome writes
    carry the token, so a poll whose lease another took over can no longer move them. `due_at` is the next poll;
    `polled_at`, `ok` and `message` are the last poll's outcome as the trigger's page shows it."""

    trigger = models.OneToOneField("workflows.Trigger", on_delete=models.CASCADE, related_name="mailbox_poll")
    source = models.CharField(max_length=400, blank=True)
    uidvalidity = models.BigIntegerField(null=True, blank=True)
    last_uid = models.BigIntegerField(default=0)
    due_at = models.DateTimeField()
    polling_until = models.DateTimeField(null=True, blank=True)
    lease_token = models.BigIntegerField(default=0)
    polled_at = models.DateTimeField(null=True, blank=True)
    ok = models.BooleanField(null=True, blank=True)
    message = models.CharField(max_length=500, blank=True)
    # Failed polls in a row: the next poll waits longer each time (a refused login is not retried every minute).
    failures = models.PositiveIntegerField(default=0)

    class Meta:
        indexes = [models.Index(fields=["due_at"], name="mailbox_poll_due_idx")]

    def __str__(self) -> str:
        return f"mailbox poll of trigger {self.trigger_id}"


class SingletonLease(models.Model):
    """A duty that one process at a time performs for the whole fleet (the sweep), and who performs it now.

    A process takes the duty by a conditional update that succeeds only when no one holds it or the holder's
    lease has run out (`expires_at`, on the database's clock, which every host shares), renews it while it
    works, and gives it back when done. A holder that dies keeps the duty only until its lease runs out. No
    connection-level state is involved, so it holds behind PgBouncer in transaction mode, where a
    session-level advisory lock stays with whichever server connection took it (apps/runs/singleton.py).
    """

    name = models.CharField(max_length=64, primary_key=True)
    holder = models.CharField(max_length=200, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"lease {self.name} held by {self.holder or 'no one'}"
