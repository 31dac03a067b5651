"""Approval queues and the requests that wait in them: a person's decision that a `human.approval` step waits for.

Who works a queue is a matter of roles and object permissions, never of names: a person may work a queue when
they hold the reviewer (or admin) role and `approvals.work_approvalqueue` on the queue, granted to them or to a
group they are in (a team queue grants it to the team's group). Analysts name a queue in an approval step
when they hold `approvals.use_approvalqueue` on it.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import Group
from django.contrib.postgres.fields import ArrayField
from django.db import models
from simple_history.models import HistoricalRecords


class DecisionPolicy(models.TextChoices):
    """How many people must approve, and in what order. Any rejection rejects, under every policy."""

    ANY = "any", "Any one person"
    ALL = "all", "Everyone in the queue"
    K_OF_N = "k_of_n", "A number of different people"
    SEQUENTIAL = "sequential", "One after another, queue by queue"


class Assignment(models.TextChoices):
    """How new items find a reviewer: reviewers pull them ("Next item"), or the queue pushes them."""

    PULL = "pull", "Reviewers take items themselves"
    ROUND_ROBIN = "round_robin", "Round-robin"
    LEAST_LOADED = "least_loaded", "Least loaded reviewer"


class ApprovalQueue(models.Model):
    """A team's or group's queue of approval requests, with its service level, escalation chain, decision
    policy defaults and the reason codes reviewers choose from.

    `calendar` is `apps.approvals.calendar.BusinessCalendar.to_dict()`; `sla_hours` are business hours on it
    (None: no due time). `escalation` is a list of `{"at": fraction of the SLA, "action": "remind" |
    "notify_lead" | "reassign"}`, fired once each. `reason_codes` is a list of `{"code", "label"}`.
    """

    key = models.CharField(max_length=150, unique=True, help_text="What approval steps name, e.g. team:claims.")
    name = models.CharField(max_length=150)
    description = models.TextField(blank=True)
    team = models.ForeignKey(
        "accounts.Team", on_delete=models.PROTECT, null=True, blank=True, related_name="approval_queues"
    )
    lead = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    escalation_group = models.ForeignKey(Group, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    calendar = models.JSONField(default=dict, blank=True)
    sla_hours = models.FloatField(null=True, blank=True)
    escalation = models.JSONField(default=list, blank=True)
    policy = models.CharField(max_length=16, choices=DecisionPolicy.choices, default=DecisionPolicy.ANY)
    required_approvals = models.PositiveSmallIntegerField(default=1)
    separation_of_duties = models.BooleanField(default=True)
    confirm_below = models.FloatField(
        default=0.9, help_text="Fields with a confidence below this must be confirmed or corrected."
    )
    bulk_threshold = models.FloatField(
        null=True, blank=True, help_text="Bulk approval for items whose every field is at least this; empty: none."
    )
    audit_sample_rate = models.FloatField(
        default=0.0, help_text="The share of items that would go straight through that are reviewed anyway."
    )
    assignment = models.CharField(max_length=16, choices=Assignment.choices, default=Assignment.PULL)
    reason_codes = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    history = HistoricalRecords()

    class Meta:
        ordering = ["name"]
        permissions = [
            ("work_approvalqueue", "Work the items of the queue"),
            ("use_approvalqueue", "Name the queue in approval steps"),
            ("manage_approvalqueue", "Change the queue's settings and reassign its items"),
        ]

    def __str__(self) -> str:
        return self.name


class ApprovalRequest(models.Model):
    """One item to decide. `state` moves once, from pending, by a conditional update: concurrent deciders
    cannot both win, and a decided request never changes again. Under a policy that needs several people,
    each approval is an `ApprovalDecision` and the item goes back to its queue until the policy is met.

    `proposal` is the data under review (a model's output, or the step's params), `corrected` the data as the
    reviewers left it; `confidence` maps top-level fields to a score in [0, 1] whose origin is
    `confidence_source` ("logprob", "agreement", "rule" or "none"); `evidence` maps fields to
    `{"start", "end", "quote"}` in `source_text`. `revision` grows with every change a reviewer could miss:
    a decision made on an older revision is refused, so an open item never changes underneath its reviewer.
    """

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"
        EXPIRED = "expired", "Expired"
        CANCELLED = "cancelled", "Cancelled"

    class Priority(models.IntegerChoices):
        LOW = 0, "Low"
        NORMAL = 1, "Normal"
        HIGH = 2, "High"
        URGENT = 3, "Urgent"

    step_run = models.OneToOneField("runs.StepRun", on_delete=models.PROTECT, related_name="approval")
    run = models.ForeignKey("runs.Run", on_delete=models.PROTECT, related_name="approvals")
    queue = models.ForeignKey(ApprovalQueue, on_delete=models.PROTECT, related_name="requests")
    title = models.CharField(max_length=200)
    priority = models.SmallIntegerField(choices=Priority.choices, default=Priority.NORMAL)
    payload = models.JSONField(default=dict, blank=True)
    proposal = models.JSONField(default=dict, blank=True)
    corrected = models.JSONField(default=dict, blank=True)
    schema = models.JSONField(default=dict, blank=True)
    confidence = models.JSONField(default=dict, blank=True)
    confidence_source = models.CharField(max_length=16, default="none")
    # The lowest field confidence (None: no scores), for the inbox's confidence filter and sort.
    min_confidence = models.FloatField(null=True, blank=True)
    evidence = models.JSONField(default=dict, blank=True)
    source_text = models.TextField(blank=True)
    review_step_key = models.CharField(max_length=64, blank=True)
    separation_of_duties = models.BooleanField(default=True)
    # Everyone who started this run or a run it descends from (restarts, replays, parent runs): under separation
    # of duties none of them decides, and the inbox leaves the item out of their lists.
    initiators = ArrayField(models.BigIntegerField(), default=list, blank=True)
    policy = models.CharField(max_length=16, choices=DecisionPolicy.choices, default=DecisionPolicy.ANY)
    required_approvals = models.PositiveSmallIntegerField(default=1)
    # For the sequential policy: the queue ids in order; `stage` indexes the one that decides now.
    stages = models.JSONField(default=list, blank=True)
    stage = models.PositiveSmallIntegerField(default=0)
    approvals_count = models.PositiveSmallIntegerField(default=0)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING, db_index=True)
    assignee = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    claimed_at = models.DateTimeField(null=True, blank=True)
    # Set when the item reached `assignee` as someone's delegate: that person stays informed.
    delegated_from = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    audit_sample = models.BooleanField(default=False)
    revision = models.PositiveIntegerField(default=1)
    due_at = models.DateTimeField(null=True, blank=True, help_text="The service level: when it should be decided.")
    expires_at = models.DateTimeField(null=True, blank=True, help_text="When the step stops waiting and expires.")
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    reason_code = models.CharField(max_length=64, blank=True)
    reason = models.TextField(blank=True)
    edits = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at"]
        indexes = [
            # "Next item": the most urgent unclaimed pending item of a queue.
            models.Index(
                fields=["queue", "-priority", "due_at", "created_at"],
                condition=models.Q(state="pending", assignee__isnull=True),
                name="approval_next_idx",
            ),
            models.Index(fields=["assignee", "state"], name="approval_assignee_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.title} (run {self.run_id})"


class ApprovalDecision(models.Model):
    """One person's decision on an item: what they saw, what they changed and why, and how long it took.
    Together these rows are the labelled corrections a workflow's evaluation set is exported from. One
    person decides an item once (the unique constraint), so one person counts once under every policy."""

    request = models.ForeignKey(ApprovalRequest, on_delete=models.PROTECT, related_name="decisions")
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    decision = models.CharField(max_length=16)
    stage = models.PositiveSmallIntegerField(default=0)
    reason_code = models.CharField(max_length=64, blank=True)
    reason = models.TextField(blank=True)
    data_before = models.JSONField(default=dict, blank=True)
    data_after = models.JSONField(default=dict, blank=True)
    # [{"field", "before", "after"}] for every top-level field the decision changed.
    changes = models.JSONField(default=list, blank=True)
    confirmed_fields = models.JSONField(default=list, blank=True)
    confidence = models.JSONField(default=dict, blank=True)
    time_spent_seconds = models.FloatField(null=True, blank=True)
    bulk = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at"]
        constraints = [models.UniqueConstraint(fields=["request", "actor"], name="approval_decision_once")]

    def __str__(self) -> str:
        return f"{self.decision} by {self.actor_id} on {self.request_id}"


class ApprovalActivity(models.Model):
    """What happened to an item besides decisions (claimed, released, reassigned, skipped, delegated,
    reminded, escalated): its timeline on the decision view, and what "Next item" reads to skip an item
    a reviewer set aside."""

    class Kind(models.TextChoices):
        CLAIMED = "claimed", "Claimed"
        RELEASED = "released", "Released"
        REASSIGNED = "reassigned", "Reassigned"
        SKIPPED = "skipped", "Skipped"
        ASSIGNED = "assigned", "Assigned"
        DELEGATED = "delegated", "Delegated"
        REMINDED = "reminded", "Reminded"
        ESCALATED = "escalated", "Escalated"
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"

    request = models.ForeignKey(ApprovalRequest, on_delete=models.CASCADE, related_name="activities")
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, related_name="+")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    reason = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "pk"]
        indexes = [models.Index(fields=["actor", "kind", "request"], name="approval_activity_actor_idx")]

    def __str__(self) -> str:
        return f"{self.kind} on {self.request_id}"


class EscalationTimer(models.Model):
    """One step of a queue's escalation chain for one item, due at `fire_at`. Fired exactly once: the firing
    transaction claims the row by a conditional update on `fired_at` and records its action in the same
    transaction; an item decided before then never fires (`cancelled`)."""

    class Action(models.TextChoices):
        REMIND = "remind", "Remind the assignee"
        NOTIFY_LEAD = "notify_lead", "Notify the queue lead"
        REASSIGN = "reassign", "Reassign to the escalation group"

    request = models.ForeignKey(ApprovalRequest, on_delete=models.CASCADE, related_name="escalations")
    step = models.PositiveSmallIntegerField()
    action = models.CharField(max_length=16, choices=Action.choices)
    fire_at = models.DateTimeField()
    fired_at = models.DateTimeField(null=True, blank=True)
    cancelled = models.BooleanField(default=False)

    class Meta:
        ordering = ["fire_at", "pk"]
        constraints = [models.UniqueConstraint(fields=["request", "step"], name="escalation_step_once")]
        indexes = [
            models.Index(
                fields=["fire_at"],
                condition=models.Q(fired_at__isnull=True, cancelled=False),
                name="escalation_due_idx",
            )
        ]

    def __str__(self) -> str:
        return f"{self.action} for {self.request_id} at {self.fire_at:%Y-%m-%d %H:%M}"


class OutOfOffice(models.Model):
    """A reviewer away from `starts_on` to `ends_on` (inclusive, in their calendar dates): items that would be
    assigned to them go to `delegate`, and they are told."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="absences")
    starts_on = models.DateField()
    ends_on = models.DateField()
    delegate = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    note = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["starts_on"]
        constraints = [
            models.CheckConstraint(condition=models.Q(ends_on__gte=models.F("starts_on")), name="absence_dates_order")
        ]

    def __str__(self) -> str:
        return f"{self.user_id} away {self.starts_on} to {self.ends_on}"


class Notification(models.Model):
    """Something a person should know about an item: the in-app badge counts the unread ones, and the email
    digest sends the ones not yet mailed."""

    class Kind(models.TextChoices):
        ASSIGNED = "assigned", "Assigned to you"
        DELEGATED = "delegated", "Delegated while you are away"
        REMINDER = "reminder", "Reminder"
        ESCALATED = "escalated", "Escalated"
        NEW_ITEMS = "new_items", "New items in your queue"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notifications")
    request = models.ForeignKey(ApprovalRequest, on_delete=models.CASCADE, null=True, related_name="+")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    text = models.CharField(max_length=300)
    created_at = models.DateTimeField(auto_now_add=True)
    read_at = models.DateTimeField(null=True, blank=True)
    mailed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [
            models.Index(fields=["user"], condition=models.Q(read_at__isnull=True), name="notification_unread_idx"),
            models.Index(fields=["user"], condition=models.Q(mailed_at__isnull=True), name="notification_unmailed_idx"),
        ]

    def __str__(self) -> str:
        return self.text


class SavedView(models.Model):
    """An inbox view saved as its query string: a person's own, or shared with everyone who works `queue`."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=80)
    query = models.CharField(max_length=1000)
    shared_queue = models.ForeignKey(ApprovalQueue, on_delete=models.CASCADE, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="saved_view_name_once")]

    def __str__(self) -> str:
        return self.name
