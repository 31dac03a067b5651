"""A small, explicit dataset with known KPI answers, built through the real models, relative to "now".

`dataset_build(owner=..., reviewer=...)` writes two workflows ("Claims triage" is process X), their published
versions, live cases over several days with step timings, approval items decided with an edit, an audit sample and a
breach, a failure with an incident, a failed case restarted the next day, a sub-workflow child run, and runs that
must NOT count (test, replay, what-if, a case 40 days ago), plus model calls on a priced endpoint and a self-hosted
GPU endpoint; then it builds the rollups. `EXPECTED` holds the hand-computed figures for process X over the last 30
days (`filter_x`). The Playwright test reuses both, so keep this importable and deterministic.

Times: every case starts at 09:00 server time on a day at least one day back, except C7 which started 30 minutes
ago (so it is always in the period, in the "< 1 h" backlog bucket, and not yet at risk).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django.utils import timezone
from guardian.shortcuts import assign_perm

from apps.approvals.models import ApprovalDecision, ApprovalQueue, ApprovalRequest
from apps.dashboards.models import EndpointKpiInput, KpiSettings, WorkflowKpiInput
from apps.dashboards.rollups import rollups_rebuild
from apps.dashboards.selectors import DashboardFilter
from apps.inference.models import InferenceCall, ModelEndpoint
from apps.runs.models import Incident, Run, StepRun
from apps.workflows.models import Workflow, WorkflowVersion

GRAPH: dict[str, Any] = {"steps": [], "edges": []}

# Process X ("Claims triage"), last 30 days. Every figure is worked out by hand below; see the case list in
# dataset_build's body for the timings.
#
# Cases in range: C1..C7 (C0 is 40 days old; the test, replay, what-if and child runs are not cases) → 7.
# Completed: C1, C2, C3, C5 (C5 failed, was restarted the next day, and the restart succeeded) → 4.
# Touched by a person among the completed: C2, C3 → straight-through 2 of 4, escalation 2 of 4.
# Decisions: C2 approved unchanged, C3 approved with an edit → override 1 of 2. Both audit samples → agreement 1/2.
# SLA: C2 decided before due, C3 after → breach 1 of 2 (C6 is open and overdue: at risk, not in the rate).
# Failure or incident: C4 (failed, with an incident) → 1 of 7 = 14.2857 %.
# Model cost (cloud, 0.50 in / 1.50 out per 1k): C1 0.80 + its child run 0.50, C2 0.80, C4 0.05, C5 0.50 + restart
#   0.80, C6 0.80 → 4.25. GPU (self-hosted at 7.20 per hour = 0.002 per second): C3 5 s → 0.01.
# Reviewer time: C2 300 s (recorded), C3 1,800 s (claim → decision) → 2,100 s = 35 min × 60/h = 35.00.
# Run cost = 4.25 + 0.01 + 35.00 = 39.26; per case 39.26 / 7 = 5.608571… → 5.6086.
# Saved: 4 completed × 45 min × 80 % = 144 min − 35 human min on them = 109 min = 1.8166… h → 1.82;
#   per completed case 109 / 4 = 27.25 min = 1,635 s. Value 109 / 60 × 60 = 109.00.
# ROI = (109 − 39.26) / 39.26 = 1.776362… → 1.7764.
# Payback: net over 30 days 69.74 → per month 69.74 / 30 × 30.4375 = 70.7570…; 5,000 / 70.7570… = 70.66 months.
# Cycle time of the completed cases (s): C1 18, C2 1,812, C3 3,006, C5 86,406 → nearest-rank p50 1,812, p95 and
#   p99 86,406. Machine: C1 13 (10 + 1 + the child's 2), C2 10, C3 5, C5 7 (2 + 4 + 1). Queue: C1 4, C2 602,
#   C3 1,201, C5 2. Human: 0, 300, 1,800, 0.
# Backlog now: C7 (30 min) and its item (20 min) under "< 1 h"; C6 (6 days) and its item over "> 3 days".
EXPECTED: dict[str, Any] = {
    "cases": 7,
    "throughput": 4,
    "straight_through_rate": 50.0,
    "escalation_rate": 50.0,
    "override_rate": 50.0,
    "audit_agreement": 50.0,
    "sla_breach_rate": 50.0,
    "sla_at_risk": 1,
    "failure_rate": 14.2857,
    "run_cost": Decimal("39.26"),
    "cost_per_case": Decimal("5.6086"),
    "hours_saved": Decimal("1.82"),
    "time_saved_per_case": 1635.0,
    "value": Decimal("109.00"),
    "roi": Decimal("1.7764"),
    "payback": Decimal("70.66"),
    "backlog": 2,
    "cycle_total_raw": {"p50": 1812.0, "p95": 86406.0, "p99": 86406.0},
    "cycle_machine_raw": [13.0, 10.0, 5.0, 7.0],
    "cycle_queue_raw": [4.0, 602.0, 1201.0, 2.0],
    "cycle_human_raw": [0.0, 300.0, 1800.0, 0.0],
    "backlog_buckets": {"< 1 h": (1, 1), "1–4 h": (0, 0), "4–24 h": (0, 0), "1–3 days": (0, 0), "> 3 days": (1, 1)},
    "versions": {
        1: {"cases": 2, "throughput": 2, "straight_through_rate": 50.0},
        2: {"cases": 5, "throughput": 2, "straight_through_rate": 50.0},
    },
    # The queue "Claims adjusters", same period: 4 items opened, 2 decided (both by the reviewer), 1 edited, 1 breach.
    "queue": {"opened": 4, "decided": 2, "override_rate": 50.0, "sla_breach_rate": 50.0},
    # The cloud endpoint, same period: every call that began in it, whatever run made it (the test run's too):
    # C1, child, C2, C4 (an error: overloaded), C5, C5's restart, C6, the test run, Y's case → 9 calls, cost 7.25.
    "cloud": {"calls": 9, "errors": {"overloaded": 1}, "cost": Decimal("7.25")},
    "gpu": {"calls": 1, "gpu_seconds": 5.0, "cost": Decimal("0.01")},
}


@dataclass
class Dataset:
    """What dataset_build wrote, for tests to name."""

    now: datetime
    today: date
    claims: Workflow
    invoices: Workflow
    claims_v1: WorkflowVersion
    claims_v2: WorkflowVersion
    claims_draft: WorkflowVersion
    queue: ApprovalQueue
    cloud: ModelEndpoint
    gpu: ModelEndpoint
    excluded_run_ids: list[int]

    def filter_x(self) -> DashboardFilter:
        """Process X over the last 30 days, today included."""
        return DashboardFilter(start=self.today - timedelta(days=29), end=self.today, workflow_id=self.claims.pk)


def _at(day: date, hour: int = 9, seconds: float = 0) -> datetime:
    return datetime.combine(day, time(hour), tzinfo=timezone.get_current_timezone()) + timedelta(seconds=seconds)


class _Writer:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def version(self, workflow: Workflow, number: int, owner: Any, *, published: bool = True) -> WorkflowVersion:
        state = WorkflowVersion.State.PUBLISHED if published else WorkflowVersion.State.DRAFT
        return WorkflowVersion.objects.create(
            workflow=workflow,
            number=number,
            state=state,
            graph=GRAPH,
            input_schema={"type": "object"},
            checksum=f"{number:064d}" if published else "",
            created_by=owner,
            published_by=owner if published else None,
            published_at=self.now - timedelta(days=60) if published else None,
        )

    def run(
        self,
        version: WorkflowVersion,
        start: datetime,
        *,
        status: str,
        finished: datetime | None = None,
        mode: str = Run.Mode.LIVE,
        restarted_from: Run | None = None,
        parent_step_run: StepRun | None = None,
    ) -> Run:
        run = Run.objects.create(
            workflow=version.workflow,
            version=version,
            status=status,
            mode=mode,
            restarted_from=restarted_from,
            parent_step_run=parent_step_run,
            trigger="manual",
        )
        # created_at is auto_now_add: set the history's time after the insert.
        Run.objects.filter(pk=run.pk).update(created_at=start, started_at=start, finished_at=finished)
        run.refresh_from_db()
        return run

    def step(
        self,
        run: Run,
        key: str,
        step_type: str,
        queued: datetime,
        wait: float,
        work: float,
        *,
        state: str = "succeeded",
    ) -> StepRun:
        started = queued + timedelta(seconds=wait)
        return StepRun.objects.create(
            run=run,
            step_key=key,
            step_type=step_type,
            position=StepRun.objects.filter(run=run).count(),
            state=state,
            queued_at=queued,
            started_at=started,
            finished_at=started + timedelta(seconds=work) if state != "waiting" else None,
        )

    def call(
        self,
        run: Run,
        endpoint: ModelEndpoint,
        at: datetime,
        prompt: int,
        generated: int,
        *,
        latency_ms: float = 1000.0,
        error: str = "",
    ) -> InferenceCall:
        return InferenceCall.objects.create(
            run_id=run.pk,
            step_key="extract",
            endpoint=endpoint,
            endpoint_name=endpoint.name,
            endpoint_url=endpoint.url,
            protocol="chat",
            input_sha256="0" * 64,
            prompt_tokens=prompt,
            generated_tokens=generated,
            latency_ms=latency_ms,
            ttft_ms=latency_ms / 10,
            cost=endpoint.cost(prompt, generated),
            status=InferenceCall.Status.ERROR if error else InferenceCall.Status.OK,
            error=error,
            started_at=at,
        )

    def approval(
        self,
        step: StepRun,
        queue: ApprovalQueue,
        created: datetime,
        *,
        due: datetime | None,
        claimed: datetime | None = None,
        decided: datetime | None = None,
        reviewer: Any = None,
        changes: list[dict[str, Any]] | None = None,
        time_spent: float | None = None,
        audit_sample: bool = False,
    ) -> ApprovalRequest:
        state = ApprovalRequest.State.APPROVED if decided else ApprovalRequest.State.PENDING
        request = ApprovalRequest.objects.create(
            step_run=step,
            run=step.run,
            queue=queue,
            title=f"Review run {step.run_id}",
            state=state,
            assignee=reviewer if claimed else None,
            claimed_at=claimed,
            decided_at=decided,
            decided_by=reviewer if decided else None,
            due_at=due,
            audit_sample=audit_sample,
        )
        ApprovalRequest.objects.filter(pk=request.pk).update(created_at=created)
        if decided:
            ApprovalDecision.objects.create(
                request=request,
                actor=reviewer,
                decision="approved",
                changes=changes or [],
                time_spent_seconds=time_spent,
            )
        return request


def dataset_build(*, owner: Any, reviewer: Any, now: datetime | None = None, rollups: bool = True) -> Dataset:
    """Write the dataset (see the module docstring and EXPECTED) and, unless `rollups` is False, build the rollups
    of the last 45 days. `owner` owns both workflows (an analyst); `reviewer` works the queue and decides."""
    now = now or timezone.now()
    today = timezone.localdate(now)
    w = _Writer(now)
    KpiSettings.objects.update_or_create(
        pk=KpiSettings.SINGLETON_PK, defaults={"reviewer_hourly_rate": Decimal("60"), "currency": "EUR"}
    )
    claims = Workflow.objects.create(
        name="Claims triage", slug="claims-triage", owner=owner, baseline_minutes_per_case=Decimal("45")
    )
    invoices = Workflow.objects.create(
        name="Invoice review", slug="invoice-review", owner=owner, baseline_minutes_per_case=Decimal("10")
    )
    for workflow in (claims, invoices):
        for perm in ("view_workflow", "change_workflow", "run_workflow"):
            assign_perm(f"workflows.{perm}", owner, workflow)
    WorkflowKpiInput.objects.create(workflow=claims, realisation_percent=Decimal("80"), build_cost=Decimal("5000"))
    v1 = w.version(claims, 1, owner)
    v2 = w.version(claims, 2, owner)
    draft = w.version(claims, 3, owner, published=False)
    invoices_v1 = w.version(invoices, 1, owner)
    queue = ApprovalQueue.objects.create(key="claims:adjusters", name="Claims adjusters", sla_hours=1)
    assign_perm("approvals.work_approvalqueue", reviewer, queue)
    cloud = ModelEndpoint.objects.create(
        name="cloud-large",
        url="http://cloud.invalid",
        price_input_per_1k=Decimal("0.5"),
        price_output_per_1k=Decimal("1.5"),
    )
    gpu = ModelEndpoint.objects.create(name="gpu-local", url="http://gpu.invalid")
    EndpointKpiInput.objects.create(endpoint=gpu, self_hosted=True, gpu_hourly_price=Decimal("7.20"))

    def day(offset: int) -> date:
        return today - timedelta(days=offset)

    # C0: 40 days ago, outside the period.
    t = _at(day(40))
    c0 = w.run(v1, t, status="succeeded", finished=t + timedelta(seconds=5))
    w.step(c0, "extract", "llm.extract", t, 1, 4)
    w.call(c0, cloud, t, 1000, 200)

    # C1: 20 days ago, straight through, with a sub-workflow whose child run does 2 s of work and one model call.
    t = _at(day(20))
    c1 = w.run(v1, t, status="succeeded", finished=t + timedelta(seconds=18))
    w.step(c1, "extract", "llm.extract", t, 2, 10)
    sub = w.step(c1, "sub", "flow.subworkflow", t + timedelta(seconds=12), 0, 4)
    w.step(c1, "decide", "logic.if", t + timedelta(seconds=16), 1, 1)
    w.call(c1, cloud, t, 1000, 200)
    child = w.run(
        v1, t + timedelta(seconds=12), status="succeeded", finished=t + timedelta(seconds=15), parent_step_run=sub
    )
    w.step(child, "transform", "data.transform", t + timedelta(seconds=12), 1, 2)
    w.call(child, cloud, t + timedelta(seconds=13), 1000, 0)

    # C2: 20 days ago, approved unchanged (an audit sample), 300 s recorded, decided before due.
    t = _at(day(20), 11)
    c2 = w.run(v1, t, status="succeeded", finished=t + timedelta(seconds=1812))
    w.step(c2, "extract", "llm.extract", t, 2, 10)
    approve = w.step(c2, "approve", "human.approval", t + timedelta(seconds=12), 0, 1800)
    w.approval(
        approve,
        queue,
        t + timedelta(seconds=12),
        due=t + timedelta(seconds=12 + 3600),
        claimed=t + timedelta(seconds=612),
        decided=t + timedelta(seconds=1812),
        reviewer=reviewer,
        time_spent=300,
        audit_sample=True,
    )
    w.call(c2, cloud, t, 1000, 200)

    # C3: 10 days ago on version 2, on the self-hosted GPU (5 s), approved with an edit after its due time (an
    # audit sample); no recorded time, so claim → decision (1,800 s) is the human time.
    t = _at(day(10))
    c3 = w.run(v2, t, status="succeeded", finished=t + timedelta(seconds=3006))
    w.step(c3, "extract", "llm.extract", t, 1, 5)
    approve = w.step(c3, "approve", "human.approval", t + timedelta(seconds=6), 0, 3000)
    w.approval(
        approve,
        queue,
        t + timedelta(seconds=6),
        due=t + timedelta(seconds=6 + 1800),
        claimed=t + timedelta(seconds=1206),
        decided=t + timedelta(seconds=3006),
        reviewer=reviewer,
        changes=[{"field": "amount", "before": 100, "after": 120}],
        audit_sample=True,
    )
    w.call(c3, gpu, t, 500, 100, latency_ms=5000)

    # C4: 5 days ago, failed with an incident; its one model call failed (overloaded).
    t = _at(day(5))
    c4 = w.run(v2, t, status="failed", finished=t + timedelta(seconds=4))
    failed_step = w.step(c4, "extract", "llm.extract", t, 1, 3, state="failed")
    Incident.objects.create(run=c4, step_run=failed_step, reason="The step failed after every retry.")
    w.call(c4, cloud, t, 100, 0, error="The model server is busy: too many requests at once (HTTP 429).")

    # C5: 5 days ago, failed; restarted 4 days ago and succeeded: one case, completed, straight through.
    t = _at(day(5), 10)
    c5 = w.run(v2, t, status="failed", finished=t + timedelta(seconds=3))
    w.step(c5, "extract", "llm.extract", t, 1, 2, state="failed")
    w.call(c5, cloud, t, 1000, 0)
    r = _at(day(4), 10)
    c5_restart = w.run(v2, r, status="succeeded", finished=r + timedelta(seconds=6), restarted_from=c5)
    w.step(c5_restart, "extract", "llm.extract", r, 1, 4)
    w.step(c5_restart, "decide", "logic.if", r + timedelta(seconds=5), 0, 1)
    w.call(c5_restart, cloud, r, 1000, 200)

    # C6: 6 days ago, still waiting for a reviewer, long overdue (at risk).
    t = _at(day(6))
    c6 = w.run(v2, t, status="running")
    w.step(c6, "extract", "llm.extract", t, 1, 4)
    approve = w.step(c6, "approve", "human.approval", t + timedelta(seconds=5), 0, 0, state="waiting")
    w.approval(approve, queue, t + timedelta(seconds=5), due=t + timedelta(seconds=5 + 3600))
    w.call(c6, cloud, t, 1000, 200)

    # C7: started 30 minutes ago, item open 20 minutes of its 30: not yet at risk.
    t = now - timedelta(minutes=30)
    c7 = w.run(v2, t, status="running")
    w.step(c7, "extract", "llm.extract", t, 1, 4)
    approve = w.step(c7, "approve", "human.approval", t + timedelta(minutes=10), 0, 0, state="waiting")
    w.approval(approve, queue, now - timedelta(minutes=20), due=now + timedelta(minutes=10))

    # Runs that are not cases: a test of the draft (with a model call that the endpoint still counts), a replay, and
    # a what-if re-run of C2.
    t = _at(day(10), 12)
    test_run = w.run(draft, t, status="succeeded", finished=t + timedelta(seconds=9), mode=Run.Mode.TEST)
    w.step(test_run, "extract", "llm.extract", t, 1, 8)
    w.call(test_run, cloud, t, 1000, 1000)
    replay = w.run(v1, t, status="succeeded", finished=t + timedelta(seconds=2), mode=Run.Mode.REPLAY)
    w.step(replay, "extract", "llm.extract", t, 0, 2)
    what_if = w.run(v1, t, status="failed", finished=t + timedelta(seconds=2), mode=Run.Mode.WHAT_IF, restarted_from=c2)
    w.step(what_if, "extract", "llm.extract", t, 0, 2, state="failed")

    # Workflow Y: one straight-through case 2 days ago.
    t = _at(day(2))
    y1 = w.run(invoices_v1, t, status="succeeded", finished=t + timedelta(seconds=30))
    w.step(y1, "extract", "llm.extract", t, 1, 20)
    w.call(y1, cloud, t, 2000, 0)

    if rollups:
        rollups_rebuild(start=day(45), end=today)
    return Dataset(
        now=now,
        today=today,
        claims=claims,
        invoices=invoices,
        claims_v1=v1,
        claims_v2=v2,
        claims_draft=draft,
        queue=queue,
        cloud=cloud,
        gpu=gpu,
        excluded_run_ids=[test_run.pk, replay.pk, what_if.pk, child.pk, c5_restart.pk],
    )
