"""B11: the manager's overview over one million runs of rollups, against a plain SQL query of the same rows, and
the rollup job's throughput.

Setup. A manager (the manager role: she reads every workflow), WORKFLOWS workflows with VERSIONS published versions
each, and one year (DAYS days) of `WorkflowDayRollup` rows written directly: one row per day × workflow × version,
whose `cases` add up to exactly RUNS (one million) runs, with plausible outcomes, costs, human time and four
duration histograms per row (drawn from a pool of histograms of log-normal samples of the row's size). The rollup
tables are what the overview reads, so this is the shape of a year of a busy installation: 21,900 rows.

Overview. `overview_for_user(manager, filter)` for the last 365 days and the last 90 days, across every process:
the KPI tiles, cycle-time percentiles merged from the histograms, the daily series, the backlog now (open runs and
approvals through their indexes: none here) and a row per process, all in the selector's fixed number of
queries. Peer: the plain SQL a hand-written view would send for the same figures' raw material, on the same
connection: one statement summing every counter of the same rows by day and workflow, and one merging the
same histograms by workflow (unnest WITH ORDINALITY, GROUP BY bucket), both fetched in full. A second peer drops
the empty buckets before the GROUP BY, as the product does (for information: the goal is against the plain one).
The three alternate (the order reversed every repetition) after a warm-up; BENCH_REPS repetitions of CALLS calls
per side.
The overview page itself (`GET /dashboards/` through Django's test Client, with the manager's session, the
same 365 days) is timed too, for information.

Rollup job. RAW_RUNS live runs over RAW_DAYS days written with bulk_create in the engine's shape (three step
runs each; one in five waits for a person: an approval request decided with a recorded time; one model call
each), then `rollups_rebuild` over those days, timed: runs processed per second. Run once more to show a
rebuild replaces rather than adds (same row count).
"""

from __future__ import annotations

import os
import random
import time
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from bench.b10 import Info
from bench.common import REPETITIONS, Goal, median, print_goals, table
from bench.stack import Services

SCALE = float(os.environ.get("BENCH_SCALE", "1"))
RUNS = 1_000_000
DAYS = 365
WORKFLOWS = 20
VERSIONS = 3
CALLS = 5
GOAL = 2.0
RAW_RUNS = max(500, int(10_000 * SCALE))
RAW_DAYS = 5
POOL = 40  # histogram variants per row size
BATCH = 5_000


def _histogram_pool(rng: random.Random, sizes: set[int]) -> dict[int, list[list[list[int]]]]:
    """Per row size: POOL variants of (total, machine, queue, human) histograms of that many samples."""
    from apps.dashboards.histograms import histogram_of

    pool: dict[int, list[list[list[int]]]] = {}
    for size in sizes:
        variants = []
        for _ in range(POOL):
            machine = [rng.lognormvariate(2.5, 0.8) for _ in range(size)]
            queue = [rng.lognormvariate(1.0, 1.5) for _ in range(size)]
            human = [rng.lognormvariate(5.5, 1.0) if rng.random() < 0.3 else 0.0 for _ in range(size)]
            total = [m + q + h + rng.expovariate(1 / 30) for m, q, h in zip(machine, queue, human, strict=True)]
            variants.append([histogram_of(total), histogram_of(machine), histogram_of(queue), histogram_of(human)])
        pool[size] = variants
    return pool


def prepare(today: date) -> tuple[Any, list[int]]:
    """The manager, the workflows and a year of rollup rows standing for RUNS runs."""
    from django.db import transaction
    from django.test.utils import override_settings

    from apps.accounts.services import user_create
    from apps.dashboards.models import WorkflowDayRollup
    from apps.workflows.models import Workflow, WorkflowVersion
    from bench.common import PASSWORD, bench_user

    with override_settings(PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"]):
        manager = user_create(username="b11-manager", password=PASSWORD, roles=["manager"], first_name="Max")
    owner = bench_user()
    rng = random.Random(11)
    rows_total = DAYS * WORKFLOWS * VERSIONS
    base, extra = divmod(RUNS, rows_total)
    pool = _histogram_pool(rng, {base, base + 1})
    started = time.perf_counter()
    workflow_ids = []
    with transaction.atomic():
        versions = []
        for index in range(WORKFLOWS):
            workflow = Workflow.objects.create(
                name=f"B11 process {index:02d}",
                slug=f"b11-process-{index:02d}",
                owner=owner,
                baseline_minutes_per_case=Decimal(rng.choice([5, 12, 20, 45])),
            )
            workflow_ids.append(workflow.pk)
            for number in range(1, VERSIONS + 1):
                versions.append(
                    WorkflowVersion.objects.create(
                        workflow=workflow,
                        number=number,
                        state=WorkflowVersion.State.PUBLISHED,
                        graph={"steps": [], "edges": []},
                        input_schema={"type": "object"},
                        checksum=f"{index:032d}{number:032d}",
                        created_by=owner,
                    )
                )
        batch: list[WorkflowDayRollup] = []
        row = 0
        for offset in range(DAYS):
            day = today - timedelta(days=offset)
            for version in versions:
                cases = base + (1 if row < extra else 0)
                row += 1
                failed = sum(1 for _ in range(cases) if rng.random() < 0.02)
                completed = cases - failed
                escalated = sum(1 for _ in range(completed) if rng.random() < 0.3)
                decisions = escalated
                total, machine, queue, human = rng.choice(pool[cases])
                batch.append(
                    WorkflowDayRollup(
                        day=day,
                        workflow_id=version.workflow_id,
                        version_id=version.pk,
                        cases=cases,
                        completed=completed,
                        straight_through=completed - escalated,
                        escalated=escalated,
                        escalated_completed=escalated,
                        failed=failed,
                        incidents=failed // 2,
                        failed_or_incident=failed,
                        approvals=escalated,
                        decisions=decisions,
                        overridden=decisions // 5,
                        audit_decisions=decisions // 10,
                        audit_agreed=decisions // 12,
                        sla_due=decisions,
                        sla_breached=decisions // 20,
                        prompt_tokens=cases * 1200,
                        generated_tokens=cases * 300,
                        model_calls=cases * 2,
                        cost_model=Decimal(cases) * Decimal("0.0105"),
                        cost_gpu=Decimal(0),
                        human_seconds=escalated * 240.0,
                        human_seconds_completed=escalated * 240.0,
                        hist_total=total,
                        hist_machine=machine,
                        hist_queue=queue,
                        hist_human=human,
                    )
                )
                if len(batch) >= BATCH:
                    WorkflowDayRollup.objects.bulk_create(batch)
                    batch = []
        WorkflowDayRollup.objects.bulk_create(batch)
    represented = sum(WorkflowDayRollup.objects.values_list("cases", flat=True))
    print(
        f"\nB11 setup: {rows_total:,} rollup rows ({DAYS} days × {WORKFLOWS} workflows × {VERSIONS} versions) standing "
        f"for {represented:,} runs, written in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    return manager, workflow_ids


PEER_COUNTERS = [
    "cases",
    "completed",
    "straight_through",
    "escalated",
    "escalated_completed",
    "failed",
    "incidents",
    "failed_or_incident",
    "cancelled",
    "restarts",
    "approvals",
    "decisions",
    "overridden",
    "audit_decisions",
    "audit_agreed",
    "sla_due",
    "sla_breached",
    "prompt_tokens",
    "generated_tokens",
    "model_calls",
    "cost_model",
    "cost_gpu",
    "gpu_seconds",
    "human_seconds",
    "human_seconds_completed",
]
PEER_SUMS_SQL = (
    "SELECT day, workflow_id, "
    + ", ".join(f"sum({name})" for name in PEER_COUNTERS)
    + " FROM dashboards_workflowdayrollup WHERE day BETWEEN %s AND %s AND workflow_id = ANY(%s) GROUP BY 1, 2"
)
PEER_HISTOGRAMS_SQL = (
    "SELECT r.workflow_id, t.i, sum(t.a0), sum(t.a1), sum(t.a2), sum(t.a3) FROM dashboards_workflowdayrollup r, "
    "unnest(r.hist_total, r.hist_machine, r.hist_queue, r.hist_human) WITH ORDINALITY AS t(a0, a1, a2, a3, i) "
    "WHERE r.day BETWEEN %s AND %s AND r.workflow_id = ANY(%s) GROUP BY 1, 2"
)


PEER_HISTOGRAMS_NONZERO_SQL = PEER_HISTOGRAMS_SQL.replace(
    " GROUP BY 1, 2", " AND (t.a0 <> 0 OR t.a1 <> 0 OR t.a2 <> 0 OR t.a3 <> 0) GROUP BY 1, 2"
)


def peer(start: date, end: date, workflow_ids: list[int], *, drop_zeros: bool = False) -> int:
    """The plain SQL of the same rows: counters by day and workflow, histograms merged by workflow (with
    `drop_zeros`, the empty buckets dropped before the GROUP BY, as the product does)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(PEER_SUMS_SQL, [start, end, workflow_ids])
        rows = len(cursor.fetchall())
        cursor.execute(PEER_HISTOGRAMS_NONZERO_SQL if drop_zeros else PEER_HISTOGRAMS_SQL, [start, end, workflow_ids])
        rows += len(cursor.fetchall())
    return rows


def raw_runs_prepare(today: date) -> tuple[date, date, int]:
    """RAW_RUNS live runs over RAW_DAYS days (ending yesterday) in the engine's shape; returns the day range."""
    from django.db import transaction
    from django.utils import timezone

    from apps.approvals.models import ApprovalDecision, ApprovalQueue, ApprovalRequest
    from apps.inference.models import InferenceCall, ModelEndpoint
    from apps.runs.models import Run, StepRun
    from apps.workflows.models import Workflow, WorkflowVersion
    from bench.common import bench_user

    owner = bench_user()
    rng = random.Random(111)
    workflow = Workflow.objects.create(name="B11 raw", slug="b11-raw", owner=owner, baseline_minutes_per_case=10)
    version = WorkflowVersion.objects.create(
        workflow=workflow,
        number=1,
        state=WorkflowVersion.State.PUBLISHED,
        graph={"steps": [], "edges": []},
        input_schema={"type": "object"},
        checksum="b11" * 21 + "r",
        created_by=owner,
    )
    queue = ApprovalQueue.objects.create(key="b11:raw", name="B11 raw", sla_hours=4)
    endpoint = ModelEndpoint.objects.create(
        name="b11-cloud",
        url="http://127.0.0.1:9",
        price_input_per_1k=Decimal("0.5"),
        price_output_per_1k=Decimal("1.5"),
    )
    zone = timezone.get_current_timezone()
    first_day = today - timedelta(days=RAW_DAYS)
    started = time.perf_counter()
    with transaction.atomic():
        runs = Run.objects.bulk_create(
            Run(workflow=workflow, version=version, status="succeeded", trigger="schedule") for _ in range(RAW_RUNS)
        )
        steps: list[StepRun] = []
        calls: list[InferenceCall] = []
        starts: dict[int, datetime] = {}
        by_day: dict[date, list[int]] = {}
        for index, run in enumerate(runs):
            day = first_day + timedelta(days=index % RAW_DAYS)
            at = datetime.combine(day, datetime.min.time(), tzinfo=zone) + timedelta(hours=8, seconds=index // RAW_DAYS)
            starts[run.pk] = at
            by_day.setdefault(day, []).append(run.pk)
            clock = at
            for position, (key, kind) in enumerate(
                (("extract", "llm.extract"), ("check", "logic.if"), ("post", "http.request"))
            ):
                wait, work = rng.uniform(0.01, 0.5), rng.lognormvariate(0.5, 0.8)
                steps.append(
                    StepRun(
                        run=run, step_key=key, step_type=kind, position=position, state="succeeded", queued_at=clock,
                        started_at=clock + timedelta(seconds=wait), finished_at=clock + timedelta(seconds=wait + work),
                    )
                )  # fmt: skip
                clock += timedelta(seconds=wait + work)
            if index % 5 == 0:
                steps.append(
                    StepRun(
                        run=run, step_key="approve", step_type="human.approval", position=3, state="succeeded",
                        queued_at=clock, started_at=clock, finished_at=clock + timedelta(minutes=20),
                    )
                )  # fmt: skip
            calls.append(
                InferenceCall(
                    run_id=run.pk, step_key="extract", endpoint=endpoint, endpoint_name=endpoint.name,
                    endpoint_url=endpoint.url, protocol="chat", input_sha256="0" * 64, prompt_tokens=1200,
                    generated_tokens=300, latency_ms=rng.lognormvariate(7, 0.5), ttft_ms=rng.lognormvariate(5, 0.5),
                    cost=Decimal("1.05"), status="ok", started_at=at,
                )
            )  # fmt: skip
        StepRun.objects.bulk_create(steps, batch_size=BATCH)
        InferenceCall.objects.bulk_create(calls, batch_size=BATCH)
        approvals = []
        for step in steps:
            if step.step_type == "human.approval":
                approvals.append(
                    ApprovalRequest(
                        step_run=step, run_id=step.run_id, queue=queue, title="Check", state="approved",
                        claimed_at=step.started_at + timedelta(minutes=5), decided_at=step.finished_at,
                        due_at=step.started_at + timedelta(hours=4), audit_sample=rng.random() < 0.1,
                    )
                )  # fmt: skip
        ApprovalRequest.objects.bulk_create(approvals, batch_size=BATCH)
        ApprovalDecision.objects.bulk_create(
            (
                ApprovalDecision(
                    request=approval, actor=owner, decision="approved", time_spent_seconds=rng.uniform(60, 600),
                    changes=[{"field": "amount"}] if rng.random() < 0.2 else [],
                )
                for approval in approvals
            ),
            batch_size=BATCH,
        )  # fmt: skip
        # created_at is set on insert; give each run (and its approval) the time of the day it stands for.
        for ids in by_day.values():
            at = starts[ids[0]]
            Run.objects.filter(pk__in=ids).update(created_at=at, started_at=at, finished_at=at + timedelta(minutes=25))
            ApprovalRequest.objects.filter(run_id__in=ids).update(created_at=at + timedelta(seconds=5))
    print(
        f"B11 setup: {RAW_RUNS:,} raw runs over {RAW_DAYS} days ({len(steps):,} step runs, {len(approvals):,} "
        f"approvals, {len(calls):,} model calls) written in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    return first_day, first_day + timedelta(days=RAW_DAYS - 1), RAW_RUNS


def _vacuum_analyze(svc: Services) -> None:
    import psycopg

    with psycopg.connect(svc.owner_url, autocommit=True) as owner:
        for table_name in ("dashboards_workflowdayrollup", "runs_run", "runs_steprun", "approvals_approvalrequest"):
            owner.execute(f"VACUUM ANALYZE {table_name}")


def run(svc: Services) -> list[Any]:
    """Set up, time the overview against its peer and the rollup job, print the tables and goal lines."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.urls import reverse
    from django.utils import timezone

    from apps.dashboards.models import WorkflowDayRollup
    from apps.dashboards.rollups import rollups_rebuild
    from apps.dashboards.selectors import DashboardFilter, overview_for_user

    today = timezone.localdate()
    manager, workflow_ids = prepare(today)
    _vacuum_analyze(svc)
    ranges = {"365 days": today - timedelta(days=DAYS - 1), "90 days": today - timedelta(days=89)}
    results: dict[str, dict[str, list[float]]] = {}
    figures: dict[str, Any] = {}
    for label, start in ranges.items():
        flt = DashboardFilter(start=start, end=today)
        visible = sorted(workflow_ids)
        times: dict[str, list[float]] = {"product": [], "peer": [], "peer_nonzero": []}
        for repetition in range(REPETITIONS + 1):  # repetition 0 is the warm-up
            sides = list(times) if repetition % 2 == 0 else list(reversed(times))
            for side in sides:
                began = time.perf_counter()
                for _ in range(CALLS):
                    if side == "product":
                        overview = overview_for_user(manager, flt)
                    else:
                        peer(start, today, visible, drop_zeros=side == "peer_nonzero")
                elapsed = (time.perf_counter() - began) / CALLS * 1000
                if repetition:
                    times[side].append(elapsed)
        results[label] = times
        with CaptureQueriesContext(connection) as queries:
            overview = overview_for_user(manager, flt)
        kpis = {kpi.key: kpi.value for kpi in overview.kpis}
        figures[label] = (kpis["cases"], len(queries.captured_queries), overview.cycle_time.total.p95)

    # The page itself, for information: the same year, through the full request path.
    client = Client(SERVER_NAME="127.0.0.1")
    client.force_login(manager)
    url = f"{reverse('dashboards:overview')}?period=custom&start={ranges['365 days']}&end={today}"
    page_times = []
    status = 0
    for attempt in range(REPETITIONS + 1):
        began = time.perf_counter()
        response = client.get(url)
        status = response.status_code
        if attempt:
            page_times.append((time.perf_counter() - began) * 1000)

    first_day, last_day, raw_runs = raw_runs_prepare(today)
    _vacuum_analyze(svc)
    began = time.perf_counter()
    days, runs_read = rollups_rebuild(start=first_day, end=last_day)
    rollup_seconds = time.perf_counter() - began
    rows_after_first = WorkflowDayRollup.objects.filter(day__gte=first_day, day__lte=last_day).count()
    began = time.perf_counter()
    rollups_rebuild(start=first_day, end=last_day)
    second_seconds = time.perf_counter() - began
    rows_after_second = WorkflowDayRollup.objects.filter(day__gte=first_day, day__lte=last_day).count()

    rows = []
    for label, sides in results.items():
        cases, query_count, p95 = figures[label]
        rows.append(
            [
                label,
                f"{median(sides['product']):.1f}",
                f"{median(sides['peer']):.1f}",
                median(sides["product"]) / median(sides["peer"]),
                f"{median(sides['peer_nonzero']):.1f}",
                median(sides["product"]) / median(sides["peer_nonzero"]),
                query_count,
                f"{cases:,}",
                f"{p95:.0f} s" if p95 is not None else "-",
            ]
        )
    table(
        "B11 manager overview over the rollups (ms per call, median of repetitions)",
        [
            "range",
            "overview_for_user",
            "plain SQL peer",
            "ratio",
            "peer, zeros dropped",
            "ratio",
            "queries",
            "cases",
            "cycle p95",
        ],
        rows,
    )
    table(
        "B11 the overview page (GET /dashboards/, 365 days, test Client, for information)",
        ["status", "median ms", "max ms"],
        [[status, f"{median(page_times):.1f}", f"{max(page_times):.1f}"]],
    )
    table(
        "B11 rollup job (rollups_rebuild over the raw runs' days)",
        ["days", "runs read", "seconds", "runs per second", "rebuilt again (s)", "rows after 1st / 2nd"],
        [
            [
                days,
                f"{runs_read:,}",
                f"{rollup_seconds:.2f}",
                f"{runs_read / rollup_seconds:,.0f}",
                f"{second_seconds:.2f}",
                f"{rows_after_first} / {rows_after_second}",
            ]
        ],
    )
    if runs_read != raw_runs:
        print(f"NOTE: the rollup read {runs_read} runs, not the {raw_runs} written.")
    year = results["365 days"]
    quarter = results["90 days"]
    goals: list[Any] = [
        Goal("B11", "ratio_to_peer", median(year["product"]) / median(year["peer"]), "<=", GOAL),
        Goal("B11", "ratio_to_peer_90_days", median(quarter["product"]) / median(quarter["peer"]), "<=", GOAL),
        Info("B11", "ratio_to_peer_zeros_dropped", median(year["product"]) / median(year["peer_nonzero"])),
        Info("B11", "overview_ms", median(year["product"])),
        Info("B11", "overview_page_ms", median(page_times)),
        Info("B11", "rollup_runs_per_s", runs_read / rollup_seconds),
    ]
    if rows_after_first != rows_after_second:
        print("NOTE: a second rebuild changed the number of rows: rebuilding is not idempotent.")
    print_goals(goals)
    return goals
