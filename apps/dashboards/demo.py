"""The dashboards' part of the demo: 60 days of plausible history for the demo's published workflows, so a manager's
first look at `make run` shows a real dashboard instead of an empty one.

These are DEMO FIGURES, generated, not runs anyone made: every generated run has the trigger "demo-history" and the
input {"demo_history": true}, so run lists show where they come from and they can be told apart (or deleted) at any
time. Registered in `apps.workflows.demo.demo_extensions`, so `seed_demo` runs it; safe to run again: when any
demo-history run exists it writes nothing. It also sets the KPI inputs a real team would enter where they are still
unset, through the audited services, in the demo manager's name: a reviewer rate, each workflow's baseline, a
cautious realisation factor and a build cost, and the demo model endpoint as self-hosted on a rented GPU. The model
calls take as long as a self-hosted model needs for their tokens, so cost per case and return land where a real
team's would: cents of GPU time per case, and the reviewers' minutes as the main cost.
"""

from __future__ import annotations

import logging
import random
from datetime import datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.utils import timezone

from apps.approvals.models import ApprovalDecision, ApprovalQueue, ApprovalRequest
from apps.dashboards.models import EndpointKpiInput, KpiSettings, WorkflowKpiInput
from apps.dashboards.rollups import rollups_rebuild
from apps.dashboards.services import endpoint_kpi_inputs_update, kpi_settings_update, workflow_kpi_inputs_update
from apps.inference.models import InferenceCall, ModelEndpoint
from apps.runs.models import Run, StepRun
from apps.workflows.models import Trigger, Workflow, WorkflowVersion

logger = logging.getLogger(__name__)

DEMO_TRIGGER = "demo-history"
DAYS = 60
# Baseline minutes per case a person spent before automation, by words in the workflow's name; the first match wins.
BASELINES = [("claim", 25), ("invoice", 12), ("ticket", 8), ("support", 8), ("copy", 30), ("marketing", 30)]
DEFAULT_BASELINE = 10
REVIEWER_RATE = Decimal("55")
# A cautious share of the baseline a team would claim (people still glance at what AIOS did), and what building
# one automation cost (a few person-weeks).
REALISATION_PERCENT = Decimal("70")
BUILD_COST = Decimal("6000")
# The demo endpoint as a self-hosted model on one rented data-centre GPU.
GPU_HOURLY_PRICE = Decimal("2.40")
# How fast such a model reads a prompt and writes its answer (tokens per second), and its fixed overhead per call.
PREFILL_TOKENS_PER_SECOND = 2000.0
DECODE_TOKENS_PER_SECOND = 30.0
CALL_OVERHEAD_SECONDS = 0.15
# Cases per weekday for a workflow of "volume" 1; Saturday and Sunday are quiet.
WEEKDAY_SHAPE = (1.0, 1.1, 1.0, 0.95, 0.85, 0.2, 0.1)
LLM_STEP_PREFIX = "llm."


def _baseline(name: str) -> int:
    lowered = name.lower()
    return next((minutes for word, minutes in BASELINES if word in lowered), DEFAULT_BASELINE)


def _queue_for(version: WorkflowVersion) -> ApprovalQueue | None:
    for step in version.steps:
        if step.get("type") == "human.approval":
            key = (step.get("config") or {}).get("queue")
            queue = ApprovalQueue.objects.filter(key=key).first() if key else None
            if queue is not None:
                return queue
    return None


def seed_dashboard_demo(analyst: Any, team: Any) -> None:
    """Write 60 days of demo history for every published demo workflow and build its rollups (idempotent)."""
    if Run.objects.filter(trigger=DEMO_TRIGGER).exists():
        return
    User = get_user_model()
    manager = User.objects.filter(username="max").first()
    reviewer = User.objects.filter(username="rita").first()
    if manager is None or reviewer is None:
        logger.info("No demo manager or reviewer: the dashboards' demo history is not seeded.")
        return
    settings_row = KpiSettings.objects.filter(pk=KpiSettings.SINGLETON_PK).first()
    if settings_row is None or settings_row.reviewer_hourly_rate == 0:
        kpi_settings_update(actor=manager, reviewer_hourly_rate=REVIEWER_RATE, currency="EUR")
    endpoint = ModelEndpoint.objects.filter(is_default=True).first() or ModelEndpoint.objects.first()
    if endpoint is not None and not EndpointKpiInput.objects.filter(endpoint=endpoint).exists():
        endpoint_kpi_inputs_update(
            actor=manager, endpoint=endpoint, self_hosted=True, gpu_hourly_price=GPU_HOURLY_PRICE
        )
    now = timezone.now()
    today = timezone.localdate(now)
    rng = random.Random(2026)  # noqa: S311  (demo figures, not secrets)
    zone = timezone.get_current_timezone()
    versions = list(
        WorkflowVersion.objects.filter(state=WorkflowVersion.State.PUBLISHED, workflow__archived_at__isnull=True)
        .select_related("workflow")
        .order_by("workflow__name", "number")
    )
    latest: dict[int, WorkflowVersion] = {}
    previous: dict[int, WorkflowVersion] = {}
    # A chat assistant's conversations are not cases of a business process: no history, no ROI inputs.
    assistants = set(Trigger.objects.filter(kind=Trigger.Kind.CHAT).values_list("workflow_id", flat=True))
    versions = [version for version in versions if version.workflow_id not in assistants]
    for version in versions:
        if version.workflow_id in latest:
            previous[version.workflow_id] = latest[version.workflow_id]
        latest[version.workflow_id] = version
    # Inputs a manager already entered are kept; a workflow without any gets a team's plausible ones.
    entered = set(WorkflowKpiInput.objects.values_list("workflow_id", flat=True))
    for workflow in Workflow.objects.filter(pk__in=list(latest)).exclude(pk__in=entered):
        workflow_kpi_inputs_update(
            actor=manager,
            workflow=workflow,
            baseline_minutes_per_case=workflow.baseline_minutes_per_case or Decimal(_baseline(workflow.name)),
            realisation_percent=REALISATION_PERCENT,
            build_cost=BUILD_COST,
        )
    written = 0
    for workflow_id, version in latest.items():
        volume = rng.uniform(3, 9)
        queue = _queue_for(version)
        older = previous.get(workflow_id)
        for offset in range(DAYS, 0, -1):
            day = today - timedelta(days=offset)
            cases = max(0, round(volume * WEEKDAY_SHAPE[day.weekday()] * rng.uniform(0.7, 1.3)))
            # The newest version takes over from the previous one a fortnight ago, so the process page has two
            # versions to compare.
            pinned = older if older is not None and offset > 14 else version
            for _ in range(cases):
                start = datetime.combine(day, time(8), tzinfo=zone) + timedelta(seconds=rng.uniform(0, 9 * 3600))
                _demo_case(pinned, start, rng, queue=queue, reviewer=reviewer, endpoint=endpoint)
                written += 1
    rollups_rebuild(start=today - timedelta(days=DAYS), end=today)
    logger.info("Seeded %s demo-history cases over %s days and built their rollups.", written, DAYS)


def _demo_case(
    version: WorkflowVersion,
    start: datetime,
    rng: random.Random,
    *,
    queue: ApprovalQueue | None,
    reviewer: Any,
    endpoint: ModelEndpoint | None,
) -> None:
    """One generated case: its steps with timings, a model call per AI step, and an approval when it went to a
    person (about 30 % of the cases of a workflow with an approval step; a few are edited, a few breach)."""
    failed = rng.random() < 0.025
    escalate = queue is not None and not failed and rng.random() < 0.3
    run = Run.objects.create(
        workflow=version.workflow,
        version=version,
        status=Run.Status.FAILED if failed else Run.Status.SUCCEEDED,
        trigger=DEMO_TRIGGER,
        inputs={"demo_history": True},
        error="Demo history: a generated failure." if failed else "",
    )
    clock = start
    steps = version.steps or [{"key": "work", "type": "data.transform"}]
    for position, step in enumerate(steps):
        kind = step.get("type", "data.transform")
        if kind == "human.approval" and not escalate:
            continue
        wait = rng.uniform(0.02, 0.8)
        started = clock + timedelta(seconds=wait)
        if kind == "human.approval" and queue is not None:
            claim_after = rng.lognormvariate(6.5, 1.0)  # minutes to an hour or more before someone takes it
            handling = rng.lognormvariate(5.7, 0.5)  # about five minutes of reading and checking a case
            finished = started + timedelta(seconds=claim_after + handling)
            step_run = StepRun.objects.create(
                run=run, step_key=step["key"], step_type=kind, position=position, state="succeeded",
                queued_at=clock, started_at=started, finished_at=finished,
            )  # fmt: skip
            sla = timedelta(hours=queue.sla_hours or 4)
            edited = rng.random() < 0.18
            request = ApprovalRequest.objects.create(
                step_run=step_run, run=run, queue=queue, title=f"Demo history: review {version.workflow.name}",
                state=ApprovalRequest.State.APPROVED, assignee=reviewer, decided_by=reviewer,
                claimed_at=started + timedelta(seconds=claim_after), decided_at=finished,
                due_at=started + (sla if rng.random() > 0.08 else timedelta(seconds=claim_after / 2)),
                audit_sample=rng.random() < 0.1,
            )  # fmt: skip
            ApprovalRequest.objects.filter(pk=request.pk).update(created_at=started)
            ApprovalDecision.objects.create(
                request=request, actor=reviewer, decision="approved", time_spent_seconds=round(handling, 1),
                changes=[{"field": "amount", "before": "demo", "after": "demo (corrected)"}] if edited else [],
            )  # fmt: skip
            clock = finished
            continue
        calls_model = kind.startswith(LLM_STEP_PREFIX) and endpoint is not None
        prompt, generated = rng.randint(600, 2400), rng.randint(80, 600)
        # A model step lasts as long as its call: reading the prompt, then writing the answer token by token.
        first_token = CALL_OVERHEAD_SECONDS + prompt / PREFILL_TOKENS_PER_SECOND * rng.uniform(0.9, 1.3)
        latency = first_token + generated / DECODE_TOKENS_PER_SECOND * rng.uniform(0.85, 1.25)
        work = latency + rng.uniform(0.02, 0.2) if calls_model else rng.uniform(0.02, 0.4)
        finished = started + timedelta(seconds=work)
        last = failed and position == len(steps) - 1
        StepRun.objects.create(
            run=run, step_key=step["key"], step_type=kind, position=position,
            state="failed" if last else "succeeded", queued_at=clock, started_at=started, finished_at=finished,
        )  # fmt: skip
        if calls_model and endpoint is not None:
            InferenceCall.objects.create(
                run_id=run.pk, step_key=step["key"], endpoint=endpoint, endpoint_name=endpoint.name,
                endpoint_url=endpoint.url, protocol="chat", input_sha256="0" * 64, prompt_tokens=prompt,
                generated_tokens=generated, latency_ms=latency * 1000, ttft_ms=first_token * 1000,
                cost=endpoint.cost(prompt, generated), status=InferenceCall.Status.OK, started_at=started,
                purpose="demo-history",
            )  # fmt: skip
        clock = finished
    Run.objects.filter(pk=run.pk).update(created_at=start, started_at=start, finished_at=clock)
