"""Building the rollup tables from the raw run, approval and inference records.

What a case is (faces.md 3.2): a top-level live run (no parent step run) of a published version. Test, replay and
what-if runs are never cases; a sub-workflow's child runs are not cases either, their work (steps, approvals,
model calls) counts in the case of the top-level run they descend from.

How restarts count: a restart (a live run whose `restarted_from` is set) continues its case, it is not a new one.
The case counts once, on the day its first run arrived; its outcome is that of the newest run of its restart chain,
its finish that run's finish, and the work of every run in the chain (machine time, human time, model cost) adds up
in the case. `restarts` counts the restart runs. A restart made days later rebuilds the original's day.

Which day: every figure of a case counts on the day its first run was created (server zone). So a period's figures
describe the cases that arrived in it, and a ratio's two sides always describe the same cases. Queue rows count an
approval item on the day it opened; endpoint rows count a call on the day it began.

Rebuilding a day deletes and re-inserts that day's rows of all three tables in one transaction: running it twice
leaves the same rows, and a reader sees either the old day or the new one, never half of it.
"""

from __future__ import annotations

import re
import time as clock
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, cast

from django.db import connection, transaction
from django.db.models import Max, Min, Q
from django.utils import timezone

from apps.approvals.models import ApprovalDecision, ApprovalRequest
from apps.dashboards import histograms
from apps.dashboards.models import (
    EndpointDayRollup,
    EndpointKpiInput,
    QueueDayRollup,
    RollupFreeze,
    RollupRebuildRequest,
    RollupState,
    WorkflowDayRollup,
)
from apps.inference.models import InferenceCall
from apps.runs.models import Incident, Run, StepRun
from apps.workflows.models import WorkflowVersion

# Steps whose running time is spent waiting, not computing: a person (their time is human time, from the
# approval), a child run (its own steps count), or a timer. Their started→finished span is not machine time.
WAITING_STEP_TYPES = frozenset({"human.approval", "flow.subworkflow", "flow.foreach", "flow.parallel", "util.delay"})
DECIDED = (ApprovalRequest.State.APPROVED, ApprovalRequest.State.REJECTED)
SECONDS_PER_HOUR = Decimal(3600)
# Error kinds, from the sentence the inference client stores (apps.inference.errors): first match wins.
ERROR_KINDS: list[tuple[str, re.Pattern[str]]] = [
    ("overloaded", re.compile(r"busy|overload|too many|429", re.I)),
    ("timeout", re.compile(r"timed? ?out|did not answer|timeout", re.I)),
    ("unavailable", re.compile(r"unavailable|cannot serve|starting|50[23]", re.I)),
    ("connection", re.compile(r"reach|connect", re.I)),
    ("authentication", re.compile(r"credential|401|403|authori|authenti", re.I)),
    ("validation", re.compile(r"invalid|too long|malformed|refused the request|422|400", re.I)),
    ("generation", re.compile(r"generat|stream|unreadable", re.I)),
]


def error_kind(message: str) -> str:
    """The kind of a failed call's error, for the endpoint page's "errors by kind"."""
    for kind, pattern in ERROR_KINDS:
        if pattern.search(message or ""):
            return kind
    return "other"


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """The aware start and end (exclusive) of `day` in the server's zone."""
    zone = timezone.get_current_timezone()
    start = datetime.combine(day, time.min, tzinfo=zone)
    return start, datetime.combine(day + timedelta(days=1), time.min, tzinfo=zone)


def local_day(moment: datetime) -> date:
    return timezone.localtime(moment).date()


def _seconds(later: datetime | None, earlier: datetime | None) -> float | None:
    if later is None or earlier is None:
        return None
    return max(0.0, (later - earlier).total_seconds())


@dataclass
class _Case:
    root_id: int
    workflow_id: int
    version_id: int
    created_at: datetime
    chain: list[dict[str, Any]] = field(default_factory=list)
    runs: set[int] = field(default_factory=set)
    machine: float = 0.0
    queue: float = 0.0
    human: float = 0.0
    approvals: int = 0
    incident: bool = False


@dataclass
class _Counters:
    cases: int = 0
    completed: int = 0
    escalated: int = 0
    escalated_completed: int = 0
    failed: int = 0
    incidents: int = 0
    failed_or_incident: int = 0
    cancelled: int = 0
    restarts: int = 0
    approvals: int = 0
    decisions: int = 0
    overridden: int = 0
    audit_decisions: int = 0
    audit_agreed: int = 0
    sla_due: int = 0
    sla_breached: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    model_calls: int = 0
    cost_model: Decimal = Decimal(0)
    cost_gpu: Decimal = Decimal(0)
    gpu_seconds: float = 0.0
    human_seconds: float = 0.0
    human_seconds_completed: float = 0.0
    total: list[float] = field(default_factory=list)
    machine: list[float] = field(default_factory=list)
    queue: list[float] = field(default_factory=list)
    human: list[float] = field(default_factory=list)


def _gpu_prices() -> dict[int, Decimal]:
    """Self-hosted endpoints and their hourly GPU price (0 when not entered)."""
    return {
        endpoint_id: price or Decimal(0)
        for endpoint_id, price in EndpointKpiInput.objects.filter(self_hosted=True).values_list(
            "endpoint_id", "gpu_hourly_price"
        )
    }


def _approval_human_seconds(approval: dict[str, Any], decisions: list[dict[str, Any]]) -> float:
    """A reviewer's handling time on one item: the time each decision recorded; failing that, claim → decision."""
    recorded = [d["time_spent_seconds"] for d in decisions if d["time_spent_seconds"] is not None]
    if recorded:
        return float(sum(recorded))
    return _seconds(approval["decided_at"], approval["claimed_at"]) or 0.0


def _approval_wait_seconds(approval: dict[str, Any]) -> float | None:
    """Created → claimed (or → decided, for an item decided without a claim); None while nobody has taken it."""
    taken = approval["claimed_at"] or approval["decided_at"]
    return _seconds(taken, approval["created_at"])


def _sla(approval: dict[str, Any]) -> tuple[int, int]:
    """(counts toward the breach rate, breached): decided items with a due time, and expired ones (an item that
    expired undecided missed its due time by definition)."""
    if approval["due_at"] is None:
        return 0, 0
    if approval["state"] in DECIDED:
        return 1, int(approval["decided_at"] is not None and approval["decided_at"] > approval["due_at"])
    if approval["state"] == ApprovalRequest.State.EXPIRED:
        return 1, 1
    return 0, 0


def _is_override(decision: dict[str, Any]) -> bool:
    return decision["decision"] == "rejected" or bool(decision["changes"])


def _workflow_rows(day: date, gpu_prices: dict[int, Decimal]) -> tuple[list[WorkflowDayRollup], int]:
    """The day's workflow × version rows, and how many runs (cases and the runs in them) they were built from."""
    start, end = day_bounds(day)
    roots = Run.objects.filter(
        created_at__gte=start,
        created_at__lt=end,
        mode=Run.Mode.LIVE,
        parent_step_run__isnull=True,
        restarted_from__isnull=True,
        version__state=WorkflowVersion.State.PUBLISHED,
    ).values("id", "workflow_id", "version_id", "status", "created_at", "finished_at")
    cases: dict[int, _Case] = {}
    run: dict[str, Any]
    case_of: dict[int, int] = {}
    for run in cast(list[dict[str, Any]], list(roots)):
        case = _Case(run["id"], run["workflow_id"], run["version_id"], run["created_at"], chain=[run], runs={run["id"]})
        cases[run["id"]] = case
        case_of[run["id"]] = run["id"]
    if not cases:
        return [], 0
    # The family of each case: its restarts (and theirs), and every child run below any of them.
    chain_members = set(cases)
    frontier = list(cases)
    restarts = 0
    while frontier:
        # Two plain index lookups rather than one query joining step runs under an OR: inside the transaction that
        # just wrote a day's runs (the demo seed, a test), the planner's statistics can say the tables are empty,
        # and the joined form became a nested loop of sequential scans (minutes for a 60-day seed).
        found: list[dict[str, Any]] = [
            {**run, "parent_step_run__run_id": None}
            for run in Run.objects.filter(
                restarted_from_id__in=frontier, mode=Run.Mode.LIVE, parent_step_run__isnull=True
            )
            .order_by()
            .values("id", "restarted_from_id", "status", "created_at", "finished_at")
        ]
        step_owner = dict(StepRun.objects.filter(run_id__in=frontier).order_by().values_list("pk", "run_id"))
        if step_owner:
            for row in (
                Run.objects.filter(parent_step_run_id__in=list(step_owner))
                .order_by()
                .values("id", "restarted_from_id", "parent_step_run_id", "status", "created_at", "finished_at")
            ):
                child: dict[str, Any] = dict(row)
                child["parent_step_run__run_id"] = step_owner[child.pop("parent_step_run_id")]
                found.append(child)
        frontier = []
        for run in found:
            if run["id"] in case_of:
                continue
            parent = run["parent_step_run__run_id"] or run["restarted_from_id"]
            case = cases[case_of[parent]]
            case_of[run["id"]] = case.root_id
            case.runs.add(run["id"])
            if run["parent_step_run__run_id"] is None and parent in chain_members:
                chain_members.add(run["id"])
                case.chain.append(run)
                restarts += 1
            frontier.append(run["id"])
    run_ids = list(case_of)
    for step in (
        StepRun.objects.filter(run_id__in=run_ids, reused_from__isnull=True)
        .order_by()
        .values("run_id", "step_type", "queued_at", "started_at", "finished_at")
    ):
        case = cases[case_of[step["run_id"]]]
        case.queue += _seconds(step["started_at"], step["queued_at"]) or 0.0
        if step["step_type"] not in WAITING_STEP_TYPES:
            case.machine += _seconds(step["finished_at"], step["started_at"]) or 0.0
    for run_id in Incident.objects.filter(run_id__in=run_ids).values_list("run_id", flat=True).distinct():
        cases[case_of[run_id]].incident = True

    counters: dict[tuple[int, int], _Counters] = defaultdict(_Counters)
    approvals = cast(
        list[dict[str, Any]],
        list(
            ApprovalRequest.objects.filter(run_id__in=run_ids).values(
                "id", "run_id", "state", "created_at", "claimed_at", "decided_at", "due_at", "audit_sample"
            )
        ),
    )
    decisions_of: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for decision in ApprovalDecision.objects.filter(request_id__in=[a["id"] for a in approvals]).values(
        "request_id", "decision", "changes", "time_spent_seconds"
    ):
        decisions_of[decision["request_id"]].append(cast(dict[str, Any], decision))
    for approval in approvals:
        case = cases[case_of[approval["run_id"]]]
        bucket = counters[(case.workflow_id, case.version_id)]
        decisions = decisions_of[approval["id"]]
        case.approvals += 1
        case.human += _approval_human_seconds(approval, decisions)
        case.queue += _approval_wait_seconds(approval) or 0.0
        bucket.approvals += 1
        bucket.decisions += len(decisions)
        bucket.overridden += sum(1 for d in decisions if _is_override(d))
        if approval["audit_sample"]:
            bucket.audit_decisions += len(decisions)
            bucket.audit_agreed += sum(1 for d in decisions if d["decision"] == "approved" and not d["changes"])
        due, breached = _sla(approval)
        bucket.sla_due += due
        bucket.sla_breached += breached

    calls_of_cases = InferenceCall.objects.filter(run_id__in=run_ids).values(
        "run_id", "endpoint_id", "prompt_tokens", "generated_tokens", "latency_ms", "cost"
    )
    for call in cast(list[dict[str, Any]], list(calls_of_cases)):
        case = cases[case_of[call["run_id"]]]
        bucket = counters[(case.workflow_id, case.version_id)]
        bucket.model_calls += 1
        bucket.prompt_tokens += call["prompt_tokens"]
        bucket.generated_tokens += call["generated_tokens"]
        price = gpu_prices.get(call["endpoint_id"])
        if price is None:
            bucket.cost_model += call["cost"]
        else:
            gpu_seconds = (call["latency_ms"] or 0) / 1000
            bucket.gpu_seconds += gpu_seconds
            bucket.cost_gpu += Decimal(str(gpu_seconds)) / SECONDS_PER_HOUR * price

    for case in cases.values():
        bucket = counters[(case.workflow_id, case.version_id)]
        final = max(case.chain, key=lambda run: (run["created_at"], run["id"]))
        status = final["status"]
        bucket.cases += 1
        bucket.restarts += len(case.chain) - 1
        bucket.human_seconds += case.human
        escalated = case.approvals > 0
        bucket.escalated += int(escalated)
        failed = status == Run.Status.FAILED
        bucket.failed += int(failed)
        bucket.incidents += int(case.incident)
        bucket.failed_or_incident += int(failed or case.incident)
        bucket.cancelled += int(status == Run.Status.CANCELLED)
        if status == Run.Status.SUCCEEDED:
            bucket.completed += 1
            bucket.escalated_completed += int(escalated)
            bucket.human_seconds_completed += case.human
            bucket.total.append(_seconds(final["finished_at"], case.created_at) or 0.0)
            bucket.machine.append(case.machine)
            bucket.queue.append(case.queue)
            bucket.human.append(case.human)

    rows = [
        WorkflowDayRollup(
            day=day,
            workflow_id=workflow_id,
            version_id=version_id,
            cases=c.cases,
            completed=c.completed,
            straight_through=c.completed - c.escalated_completed,
            escalated=c.escalated,
            escalated_completed=c.escalated_completed,
            failed=c.failed,
            incidents=c.incidents,
            failed_or_incident=c.failed_or_incident,
            cancelled=c.cancelled,
            restarts=c.restarts,
            approvals=c.approvals,
            decisions=c.decisions,
            overridden=c.overridden,
            audit_decisions=c.audit_decisions,
            audit_agreed=c.audit_agreed,
            sla_due=c.sla_due,
            sla_breached=c.sla_breached,
            prompt_tokens=c.prompt_tokens,
            generated_tokens=c.generated_tokens,
            model_calls=c.model_calls,
            cost_model=c.cost_model,
            cost_gpu=c.cost_gpu,
            gpu_seconds=c.gpu_seconds,
            human_seconds=c.human_seconds,
            human_seconds_completed=c.human_seconds_completed,
            hist_total=histograms.histogram_of(c.total),
            hist_machine=histograms.histogram_of(c.machine),
            hist_queue=histograms.histogram_of(c.queue),
            hist_human=histograms.histogram_of(c.human),
        )
        for (workflow_id, version_id), c in counters.items()
    ]
    return rows, len(run_ids)


def _queue_rows(day: date) -> list[QueueDayRollup]:
    """The day's queue × reviewer × workflow rows: items of live runs (child runs included: a queue's load is
    its load) that opened on `day`. The reviewer is whoever made the final decision; undecided items have none."""
    start, end = day_bounds(day)
    approvals = cast(
        list[dict[str, Any]],
        list(
            ApprovalRequest.objects.filter(created_at__gte=start, created_at__lt=end, run__mode=Run.Mode.LIVE).values(
                "id",
                "queue_id",
                "run__workflow_id",
                "state",
                "decided_by_id",
                "created_at",
                "claimed_at",
                "decided_at",
                "due_at",
            )
        ),
    )
    decisions_of: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for decision in ApprovalDecision.objects.filter(request_id__in=[a["id"] for a in approvals]).values(
        "request_id", "decision", "changes", "time_spent_seconds"
    ):
        decisions_of[decision["request_id"]].append(cast(dict[str, Any], decision))
    groups: dict[tuple[int, int | None, int], dict[str, Any]] = {}
    for approval in approvals:
        decided = approval["state"] in DECIDED
        reviewer = approval["decided_by_id"] if decided else None
        key = (approval["queue_id"], reviewer, approval["run__workflow_id"])
        group = groups.setdefault(
            key,
            {"opened": 0, "decided": 0, "approved": 0, "rejected": 0, "edited": 0, "expired": 0, "sla_due": 0,
             "sla_breached": 0, "human_seconds": 0.0, "time_per_item": [], "wait": []},
        )  # fmt: skip
        decisions = decisions_of[approval["id"]]
        group["opened"] += 1
        group["expired"] += int(approval["state"] == ApprovalRequest.State.EXPIRED)
        due, breached = _sla(approval)
        group["sla_due"] += due
        group["sla_breached"] += breached
        wait = _approval_wait_seconds(approval)
        if wait is not None:
            group["wait"].append(wait)
        if decided:
            handling = _approval_human_seconds(approval, decisions)
            group["decided"] += 1
            group["human_seconds"] += handling
            group["time_per_item"].append(handling)
            if approval["state"] == ApprovalRequest.State.REJECTED:
                group["rejected"] += 1
            else:
                group["approved"] += 1
                group["edited"] += int(any(d["changes"] for d in decisions))
    return [
        QueueDayRollup(
            day=day,
            queue_id=queue_id,
            reviewer_id=reviewer_id,
            workflow_id=workflow_id,
            hist_time_per_item=histograms.histogram_of(group.pop("time_per_item")),
            hist_wait=histograms.histogram_of(group.pop("wait")),
            **group,
        )
        for (queue_id, reviewer_id, workflow_id), group in groups.items()
    ]


def _endpoint_rows(day: date, gpu_prices: dict[int, Decimal]) -> list[EndpointDayRollup]:
    """The day's endpoint × workflow rows: every call that began on `day` (whatever kind of run made it)."""
    start, end = day_bounds(day)
    calls = cast(list[dict[str, Any]], list(
        InferenceCall.objects.filter(
            Q(started_at__gte=start, started_at__lt=end)
            | Q(started_at__isnull=True, created_at__gte=start, created_at__lt=end),
            endpoint_id__isnull=False,
        ).values(
            "endpoint_id", "run_id", "status", "error", "prompt_tokens", "generated_tokens", "latency_ms", "ttft_ms",
            "cost",
        )
    ))  # fmt: skip
    workflow_of = dict(
        Run.objects.filter(pk__in={call["run_id"] for call in calls if call["run_id"]}).values_list("pk", "workflow_id")
    )
    groups: dict[tuple[int, int | None], dict[str, Any]] = {}
    for call in calls:
        key = (call["endpoint_id"], workflow_of.get(call["run_id"]))
        group = groups.setdefault(
            key,
            {"calls": 0, "errors": 0, "errors_by_kind": {}, "prompt_tokens": 0, "generated_tokens": 0,
             "cost_tokens": Decimal(0), "cost_gpu": Decimal(0), "gpu_seconds": 0.0, "latency": [], "ttft": []},
        )  # fmt: skip
        group["calls"] += 1
        if call["status"] == InferenceCall.Status.ERROR:
            group["errors"] += 1
            kind = error_kind(call["error"])
            group["errors_by_kind"][kind] = group["errors_by_kind"].get(kind, 0) + 1
        group["prompt_tokens"] += call["prompt_tokens"]
        group["generated_tokens"] += call["generated_tokens"]
        price = gpu_prices.get(call["endpoint_id"])
        if price is None:
            group["cost_tokens"] += call["cost"]
        else:
            gpu_seconds = (call["latency_ms"] or 0) / 1000
            group["gpu_seconds"] += gpu_seconds
            group["cost_gpu"] += Decimal(str(gpu_seconds)) / SECONDS_PER_HOUR * price
        if call["status"] != InferenceCall.Status.REPLAYED:
            group["latency"].append((call["latency_ms"] or 0) / 1000)
            if call["ttft_ms"] is not None:
                group["ttft"].append(call["ttft_ms"] / 1000)
    return [
        EndpointDayRollup(
            day=day,
            endpoint_id=endpoint_id,
            workflow_id=workflow_id,
            hist_latency=histograms.histogram_of(group.pop("latency")),
            hist_ttft=histograms.histogram_of(group.pop("ttft")),
            **group,
        )
        for (endpoint_id, workflow_id), group in groups.items()
    ]


# The first key of the per-day advisory locks: marks them as the rollups' (the second key is the day's ordinal).
ROLLUP_DAY_LOCK = 0x524F4C4C


def _day_lock(day: date) -> None:
    """Wait for, and hold until the transaction ends, the lock of `day`'s rollup rows. Transaction-level, so it
    holds behind a transaction-mode connection pooler and can never leak past a failed rebuild."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [ROLLUP_DAY_LOCK, day.toordinal()])


def rollup_day_rebuild(*, day: date) -> int:
    """Replace `day`'s rows of every rollup table with rows built from the raw records, in one transaction.
    Idempotent. Returns the number of runs read (cases and the runs in them).

    Two rebuilds of the same day (the periodic job and `dashboards_rebuild`, or two overlapping jobs) take turns on
    the day's advisory lock, taken before the raw rows are read: the second reads what was committed before it got
    the lock, so it neither collides with the first's inserts nor replaces newer rows with older ones.

    A day up to the retention purge's horizon (RollupFreeze) is not rebuilt: its raw records are partly gone, and
    its rows stand as the record of what happened; returns 0 for it."""
    with transaction.atomic():
        _day_lock(day)
        if rollup_day_frozen(day):
            return 0
        gpu_prices = _gpu_prices()
        workflow_rows, runs = _workflow_rows(day, gpu_prices)
        queue_rows = _queue_rows(day)
        endpoint_rows = _endpoint_rows(day, gpu_prices)
        WorkflowDayRollup.objects.filter(day=day).delete()
        QueueDayRollup.objects.filter(day=day).delete()
        EndpointDayRollup.objects.filter(day=day).delete()
        WorkflowDayRollup.objects.bulk_create(workflow_rows)
        QueueDayRollup.objects.bulk_create(queue_rows)
        EndpointDayRollup.objects.bulk_create(endpoint_rows)
    return runs


def rollup_day_frozen(day: date) -> bool:
    """Whether `day` lies up to the retention purge's horizon, so its rows are kept as they stand."""
    return RollupFreeze.objects.filter(pk=RollupFreeze.SINGLETON_PK, frozen_through__gte=day).exists()


def rollups_freeze_for_purge(run_ids: list[int]) -> dict[str, int]:
    """Move the horizon to the last day any of `run_ids` touched (their finish, which comes after their creation,
    approvals and model calls), before the purge removes them in the same transaction. The locks of their days are
    taken first, so a rebuild of one of them running now finishes before the horizon covers it (counting the runs
    as they were), and one that starts later skips the day. Days that still hold runs which stay keep their rows
    as they stand from then on: nightly purges move the horizon a day at a time, a year or so in the past."""
    bounds = Run.objects.filter(pk__in=run_ids).aggregate(first=Min("created_at"), last=Max("finished_at"))
    if bounds["last"] is None:
        return {}
    day = local_day(bounds["last"])
    locked = local_day(bounds["first"] or bounds["last"])
    while locked <= day:
        _day_lock(locked)
        locked += timedelta(days=1)
    freeze, created = RollupFreeze.objects.get_or_create(pk=RollupFreeze.SINGLETON_PK, defaults={"frozen_through": day})
    if not created:
        RollupFreeze.objects.filter(pk=freeze.pk, frozen_through__lt=day).update(frozen_through=day)
    return {}


def rollups_rebuild(*, start: date, end: date) -> tuple[int, int]:
    """Rebuild every day from `start` to `end` inclusive; (days, runs read)."""
    days = runs = 0
    day = start
    while day <= end:
        runs += rollup_day_rebuild(day=day)
        days += 1
        day += timedelta(days=1)
    return days, runs


def touched_days(*, since: datetime, after_call_id: int) -> tuple[set[date], set[date]]:
    """(days to rebuild, days with open work now). The days whose rows may have changed since `since`: the case
    days and approval days of runs created since then (restarts and children lead to their case's day) and of runs
    still open now; the days of calls stored after `after_call_id`. Every read goes through an index (runs by
    creation time and by status, approvals by run, calls by id): the job never scans the history. A run that was
    open at the last refresh and finished since is covered by the caller, which rebuilds the last refresh's open
    days again."""
    run_ids = set(
        Run.objects.filter(
            Q(created_at__gte=since) | Q(status__in=[Run.Status.PENDING, Run.Status.RUNNING])
        ).values_list("pk", flat=True)
    )
    open_ids = set(Run.objects.filter(status__in=[Run.Status.PENDING, Run.Status.RUNNING]).values_list("pk", flat=True))
    days: set[date] = set()
    open_days: set[date] = set()
    for created_at, started_at in InferenceCall.objects.filter(pk__gt=after_call_id).values_list(
        "created_at", "started_at"
    ):
        days.add(local_day(started_at or created_at))
    for run_id, created_at in ApprovalRequest.objects.filter(run_id__in=run_ids).values_list("run_id", "created_at"):
        days.add(local_day(created_at))
        if run_id in open_ids:
            open_days.add(local_day(created_at))
    # Up to each run's case root, through the runs restarted and the parents of child runs.
    frontier = run_ids
    seen: set[int] = set()
    open_family = set(open_ids)
    while frontier:
        seen |= frontier
        rows = Run.objects.filter(pk__in=frontier).values_list(
            "pk", "created_at", "restarted_from_id", "parent_step_run__run_id"
        )
        frontier = set()
        for pk, created_at, restarted_from, parent in rows:
            days.add(local_day(created_at))
            if pk in open_family:
                open_days.add(local_day(created_at))
            for upper in (restarted_from, parent):
                if upper:
                    if pk in open_family:
                        open_family.add(upper)
                    if upper not in seen:
                        frontier.add(upper)
    return days | open_days, open_days


def _claim(state_pk: int) -> bool:
    """Take the job's lease if no live job holds it: a conditional update that never waits on a running job."""
    now = timezone.now()
    return bool(
        RollupState.objects.filter(pk=state_pk)
        .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
        .update(lease_until=now + JOB_LEASE)
    )


def rollups_refresh(*, now: datetime | None = None) -> RollupState:
    """The periodic job: rebuild the days touched since the watermark, the days that held open work at the last
    refresh (their runs may have finished since), and every day from `rebuild_from` (the first backfill, or a
    RollupRebuildRequest); then move the watermark. Returns the state row; when another job holds the lease it
    returns at once, rebuilding nothing.

    No transaction spans the job, and no lock outlives a day: each day commits on its own (rollup_day_rebuild),
    and `rebuild_from` moves past a day once it and the days before it are rebuilt, so a job that dies half way
    through a long first backfill leaves its progress behind and the next one redoes only the days left. The
    watermark moves only at the end, so a crash makes the next job look at the same recent changes again. The
    watermark looks back REFRESH_MARGIN (and CALL_ID_MARGIN ids) for rows written by transactions that began before
    the last refresh and committed after it."""
    started = clock.monotonic()
    now = now or timezone.now()
    RollupState.objects.get_or_create(pk=RollupState.SINGLETON_PK)
    if not _claim(RollupState.SINGLETON_PK):
        return RollupState.objects.get(pk=RollupState.SINGLETON_PK)
    try:
        with transaction.atomic():
            state = RollupState.objects.select_for_update().get(pk=RollupState.SINGLETON_PK)
            last_call_id = InferenceCall.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
            # Requests stored from here on wait for the next job: this one may already be past their days.
            requests = list(RollupRebuildRequest.objects.values_list("pk", "from_day"))
            asked = [day for _, day in requests]
            if state.watermark is None:
                first = Run.objects.order_by("created_at").values_list("created_at", flat=True).first()
                if first:
                    asked.append(local_day(first))
                calls_from = InferenceCall.objects.order_by("pk").values_list("started_at", "created_at").first()
                if calls_from:
                    asked.append(local_day(calls_from[0] or calls_from[1]))
                # Everything before now is covered by the backfill from the first day; from here on, the watermark.
                state.watermark, state.last_call_id = now, last_call_id
                days, open_days = touched_days(since=now, after_call_id=last_call_id)
            else:
                days, open_days = touched_days(
                    since=state.watermark - REFRESH_MARGIN, after_call_id=max(0, state.last_call_id - CALL_ID_MARGIN)
                )
            days |= {date.fromisoformat(day) for day in state.open_days}
            if state.rebuild_from is not None:
                asked.append(state.rebuild_from)
            state.rebuild_from = min(asked) if asked else None
            # Kept until the end, so a crash does not forget the days that held open work.
            state.open_days = sorted({*state.open_days, *(day.isoformat() for day in open_days)})
            state.save()
            RollupRebuildRequest.objects.filter(pk__in=[pk for pk, _ in requests]).delete()
        if state.rebuild_from is not None:
            day = state.rebuild_from
            while day <= local_day(now):
                days.add(day)
                day += timedelta(days=1)
        runs = 0
        for day in sorted(days):
            runs += rollup_day_rebuild(day=day)
            progress: dict[str, Any] = {"lease_until": timezone.now() + JOB_LEASE}
            if state.rebuild_from is not None and day >= state.rebuild_from:
                progress["rebuild_from"] = state.rebuild_from = day + timedelta(days=1)
            RollupState.objects.filter(pk=state.pk).update(**progress)
        state.watermark = now
        state.last_call_id = last_call_id
        state.open_days = sorted(day.isoformat() for day in open_days)
        state.rebuild_from = None
        state.last_run_at = timezone.now()
        state.last_days = len(days)
        state.last_runs = runs
        state.last_seconds = clock.monotonic() - started
        state.lease_until = None
        state.save()
    except BaseException:
        # Free the lease so the next beat tries again; the progress made (rebuild_from) stays.
        RollupState.objects.filter(pk=RollupState.SINGLETON_PK).update(lease_until=None)
        raise
    return state


# Rows committed by transactions that began before the watermark carry timestamps (and ids) before it: look back
# this far. A step's transaction lasts well under a minute (the lease is seconds), so five minutes is ample.
REFRESH_MARGIN = timedelta(minutes=5)
CALL_ID_MARGIN = 1000
# How long a job's claim lasts without news: renewed after every day, so it only runs out for a job that died (or
# one day that took longer, in which case a second job may start; the per-day locks keep both correct).
JOB_LEASE = timedelta(minutes=10)
