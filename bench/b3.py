"""B3: 2,000 concurrent 3-step runs through the trigger API, drained by the default deployment's workers.

Product: POST /api/workflows/<slug>/runs/ with token authentication, through DRF's APIClient in this process
(the whole Django request path, minus the HTTP server and socket), one request after another while the
workers drain; throughput is counted from the first POST to the last Run.finished_at. Workers are the two
`python -m deploy.devstack run` starts: `-Q engine,default,connectors -c 2` (prefork) and `-Q inference -P threads
-c 16`.

Peers, on the same workers and broker:
- the fair durable peer: the same client POSTs to a minimal DRF view with the same authentication and body
  parsing (`bench.peer.peer_run_start`), which writes one row and sends a Celery chain of three steps, each
  doing B1's peer work (two autocommit writes and one publish through the product's publish path). Goal:
  runs/s at least 0.8x this peer's.
- the raw drain, a ceiling rather than a peer: 3 x N no-op tasks pre-queued, then consumed by the engine
  worker (`add_consumer`); no enqueueing, no request, no durable write. Its ratio is reported.

While the product's runs drain, a sampler reads `pg_locks` for advisory locks that a session waits for (the
global audit-chain lock was one); the goal is none. Then starvation: the latency of short runs started at a
steady pace, first alone, then while one 1,000-step run is executing. BENCH_SCALE shrinks N for a quick check.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
import redis

from bench.common import Goal, bench_user, linear_workflow, print_goals, table
from bench.stack import Services

STEPS = 3
RUNS = max(30, int(2000 * float(os.environ.get("BENCH_SCALE", "1"))))
DRAIN_TIMEOUT_SECONDS = 900.0
# A run whose step's worker transaction died (a deadlock victim) stays running until its lease expires and
# the sweeper (not started by the bench) takes it back; the drain stops when nothing finished for this long.
STALL_SECONDS = 30.0
LONG_RUN_STEPS = 1000
# Starvation probe: short runs started one every PACE seconds, measured alone and beside the long run.
PROBE_RUNS = max(20, int(100 * float(os.environ.get("BENCH_SCALE", "1"))))
PROBE_PACE_SECONDS = 0.05
LOCK_SAMPLE_SECONDS = 0.02


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def peer_drain(svc: Services, tasks: int, worker_name: str) -> float:
    """Tasks per second draining `tasks` pre-queued no-ops on the engine worker."""
    from bench.peer import DRAIN_COUNTER, DRAIN_QUEUE, noop
    from workers.celery import app

    client = redis.Redis.from_url(svc.redis_url)
    client.delete(DRAIN_COUNTER, f"{DRAIN_COUNTER}:at", DRAIN_QUEUE)
    with app.producer_or_acquire() as producer:
        for _ in range(tasks):
            noop.apply_async((tasks,), queue=DRAIN_QUEUE, producer=producer)
    started = time.time()
    app.control.add_consumer(DRAIN_QUEUE, destination=[worker_name], reply=True)
    deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
    try:
        while (done_at := client.get(f"{DRAIN_COUNTER}:at")) is None:  # bytes (sync client)
            if time.monotonic() > deadline:
                raise RuntimeError(f"the peer drain did not finish ({client.get(DRAIN_COUNTER)} of {tasks})")
            time.sleep(0.05)
    finally:
        app.control.cancel_consumer(DRAIN_QUEUE, destination=[worker_name], reply=True)
    finished = float(done_at.decode())  # type: ignore[union-attr]
    return tasks / (finished - started)


def _steps(count: int) -> list[dict[str, Any]]:
    return [{"key": f"s{i}", "type": "data.transform", "config": {"fields": {"n": "1"}}} for i in range(count)]


class LockSampler:
    """Samples pg_locks from its own connection: how often, and how many, sessions wait for an advisory lock."""

    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._stop = threading.Event()
        self.samples = 0
        self.samples_with_waits = 0
        self.max_waiting = 0
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> LockSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        with psycopg.connect(self._url, autocommit=True) as conn:
            while not self._stop.wait(LOCK_SAMPLE_SECONDS):
                row = conn.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                ).fetchone()
                waiting = int(row[0]) if row else 0
                self.samples += 1
                self.samples_with_waits += waiting > 0
                self.max_waiting = max(self.max_waiting, waiting)


@dataclass(frozen=True)
class Drained:
    """One side's drain of N runs started through the API."""

    runs_per_second: float
    steps_per_second: float
    posts_per_second: float
    elapsed: float
    latency_p50: float
    latency_p95: float
    finished: int
    failed: int
    refused: dict[int, int]
    stuck: int


def _post_all(client: Any, url: str, count: int) -> tuple[float, float, dict[int, int]]:
    refused: dict[int, int] = {}
    started = time.time()
    for _ in range(count):
        # Django logs each 500 with its traceback; the bench counts them instead of stopping.
        response = client.post(url, {"inputs": {}}, format="json")
        if response.status_code != 201:
            refused[response.status_code] = refused.get(response.status_code, 0) + 1
    return started, time.time(), refused


def _wait_drained(left: Callable[[], int]) -> int:
    """Wait until `left()` is 0, or nothing moved for STALL_SECONDS; returns what is left."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
    last_progress, last_left = time.monotonic(), -1
    while (remaining := left()) > 0:
        if remaining != last_left:
            last_progress, last_left = time.monotonic(), remaining
        if time.monotonic() - last_progress > STALL_SECONDS or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return remaining


def peer_durable(client: Any, slug: str) -> Drained:
    """The fair durable peer: N POSTs to `peer_run_start`, each a row plus a chain of three peer steps."""
    from django.db import connection

    from bench.peer import PEER_RUN_CHAIN_BASE, PEER_RUN_STEPS

    url = f"/api/bench/peer/{slug}/runs/"
    warm = client.post(url, {"inputs": {}}, format="json")
    if warm.status_code != 201:
        raise RuntimeError(f"POST {url} answered {warm.status_code}: {warm.content[:500]!r}")
    time.sleep(1)
    first_id = warm.json()["id"]
    started, submitted, refused = _post_all(client, url, RUNS)
    last_position = PEER_RUN_STEPS - 1

    def left() -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM bench_peer_run r WHERE r.id > %s AND NOT EXISTS (SELECT 1 FROM bench_peer_step s "
                "WHERE s.chain_id = %s + r.id AND s.position = %s AND s.finished_at IS NOT NULL)",
                [first_id, PEER_RUN_CHAIN_BASE, last_position],
            )
            return int(cursor.fetchone()[0])

    stuck = _wait_drained(left)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT extract(epoch FROM s.finished_at - r.created_at), extract(epoch FROM s.finished_at) "
            "FROM bench_peer_run r JOIN bench_peer_step s ON s.chain_id = %s + r.id AND s.position = %s "
            "WHERE r.id > %s AND s.finished_at IS NOT NULL",
            [PEER_RUN_CHAIN_BASE, last_position, first_id],
        )
        rows = cursor.fetchall()
    latencies = [float(r[0]) for r in rows]
    elapsed = max(float(r[1]) for r in rows) - started
    return Drained(
        runs_per_second=len(rows) / elapsed,
        steps_per_second=len(rows) * STEPS / elapsed,
        posts_per_second=RUNS / (submitted - started),
        elapsed=elapsed,
        latency_p50=_percentile(latencies, 0.5),
        latency_p95=_percentile(latencies, 0.95),
        finished=len(rows),
        failed=0,
        refused=refused,
        stuck=stuck,
    )


def product_runs(client: Any, workflow: Any) -> Drained:
    """N POSTs to the product's trigger API, drained by the workers."""
    from django.db.models import F, Max

    from apps.runs.models import Run

    url = f"/api/workflows/{workflow.slug}/runs/"
    warm = client.post(url, {"inputs": {}}, format="json")
    if warm.status_code != 201:
        raise RuntimeError(f"POST {url} answered {warm.status_code}: {warm.content[:500]!r}")
    time.sleep(1)
    first_id = Run.objects.filter(workflow=workflow).aggregate(top=Max("pk"))["top"]
    started, submitted, refused = _post_all(client, url, RUNS)
    runs = Run.objects.filter(workflow=workflow, pk__gt=first_id)
    stuck = _wait_drained(lambda: runs.filter(finished_at__isnull=True).count())
    runs = runs.filter(finished_at__isnull=False)
    latencies = [
        d.total_seconds()
        for d in runs.annotate(latency=F("finished_at") - F("started_at")).values_list("latency", flat=True)
    ]
    last = runs.aggregate(last=Max("finished_at"))["last"].timestamp()
    finished = runs.count()
    elapsed = last - started
    return Drained(
        runs_per_second=finished / elapsed,
        steps_per_second=finished * STEPS / elapsed,
        posts_per_second=RUNS / (submitted - started),
        elapsed=elapsed,
        latency_p50=_percentile(latencies, 0.5),
        latency_p95=_percentile(latencies, 0.95),
        finished=finished,
        failed=runs.exclude(status="succeeded").count(),
        refused=refused,
        stuck=stuck,
    )


def paced_latencies(client: Any, workflow: Any) -> list[float]:
    """Start PROBE_RUNS short runs one every PROBE_PACE_SECONDS; their run latencies (s) once all finished."""
    from django.db.models import F

    from apps.runs.models import Run

    url = f"/api/workflows/{workflow.slug}/runs/"
    ids = []
    for _ in range(PROBE_RUNS):
        began = time.monotonic()
        response = client.post(url, {"inputs": {}}, format="json")
        if response.status_code != 201:
            raise RuntimeError(f"POST {url} answered {response.status_code}: {response.content[:300]!r}")
        ids.append(response.json()["id"])
        time.sleep(max(0.0, PROBE_PACE_SECONDS - (time.monotonic() - began)))
    runs = Run.objects.filter(pk__in=ids)
    _wait_drained(lambda: runs.filter(finished_at__isnull=True).count())
    return [
        d.total_seconds()
        for d in runs.filter(finished_at__isnull=False)
        .annotate(latency=F("finished_at") - F("started_at"))
        .values_list("latency", flat=True)
    ]


def starvation(client: Any, actor: Any, short: Any) -> tuple[list[float], list[float], float, str]:
    """Short runs' latencies alone, then beside one LONG_RUN_STEPS-step run; and the long run's own time."""
    from apps.runs.models import Run, StepRun
    from apps.runs.services import run_start

    alone = paced_latencies(client, short)
    long_workflow = linear_workflow(actor, f"B3 {LONG_RUN_STEPS} steps {time.time_ns()}", _steps(LONG_RUN_STEPS))
    long_run, _ = run_start(actor=actor, workflow=long_workflow, inputs={})
    time.sleep(1.0)  # the long run is well under way before the probes start
    beside = paced_latencies(client, short)
    # Progress is the long run's steps finishing, so a slow but moving run is not taken for a stuck one.
    _wait_drained(
        lambda: StepRun.objects.filter(run_id=long_run.pk, finished_at__isnull=True).count()
        + Run.objects.filter(pk=long_run.pk, finished_at__isnull=True).count()
    )
    long_run.refresh_from_db()
    seconds = (
        (long_run.finished_at - long_run.started_at).total_seconds()
        if long_run.finished_at and long_run.started_at
        else float("nan")
    )
    still_running = Run.objects.filter(pk=long_run.pk, finished_at__isnull=True).exists()
    return alone, beside, seconds, "still running" if still_running else long_run.status


def run(svc: Services, engine_worker_name: str) -> list[Goal]:
    from django.test.utils import override_settings
    from rest_framework.test import APIClient

    from apps.accounts.services import api_token_issue

    drain_tasks_per_second = peer_drain(svc, RUNS * STEPS, engine_worker_name)

    actor = bench_user()
    workflow = linear_workflow(actor, f"B3 {STEPS} steps {time.time_ns()}", _steps(STEPS))
    _, token_key = api_token_issue(user=actor, name=f"B3 {time.time_ns()}", lifetime_days=1)
    client = APIClient(SERVER_NAME="127.0.0.1")
    client.raise_request_exception = False  # a 500 is counted, as an HTTP client would see it
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token_key}")

    with override_settings(ROOT_URLCONF="bench.urls"):
        peer = peer_durable(client, workflow.slug)
    with LockSampler(svc.owner_url) as locks:
        product = product_runs(client, workflow)
    alone, beside, long_seconds, long_status = starvation(client, actor, workflow)

    def side(label: str, d: Drained) -> list[list[str]]:
        return [
            [f"{label}: submission (POSTs/s, one client)", f"{d.posts_per_second:.0f}"],
            [f"{label}: first POST -> last run finished (s)", f"{d.elapsed:.2f}"],
            [f"{label}: runs/s", f"{d.runs_per_second:.1f}"],
            [f"{label}: steps/s", f"{d.steps_per_second:.1f}"],
            [f"{label}: run latency p50 / p95 (s)", f"{d.latency_p50:.3f} / {d.latency_p95:.3f}"],
            [f"{label}: runs finished / not succeeded", f"{d.finished} / {d.failed}"],
            [f"{label}: POSTs refused", ", ".join(f"{k}: {v}" for k, v in d.refused.items()) or "none"],
            [f"{label}: runs stuck (no progress for {STALL_SECONDS:g} s)", str(d.stuck)],
        ]

    alone_p95, beside_p95 = _percentile(alone, 0.95), _percentile(beside, 0.95)
    table(
        f"B3 {RUNS} runs x {STEPS} steps via the trigger API (APIClient in-process, token auth)",
        ["measure", "value"],
        [
            *side("AIOS", product),
            *side("fair durable peer", peer),
            [
                f"raw drain of {RUNS * STEPS} pre-queued no-op tasks (tasks/s, a ceiling)",
                f"{drain_tasks_per_second:.0f}",
            ],
            [
                "AIOS: pg_locks samples with an advisory-lock waiter / all (max waiting)",
                f"{locks.samples_with_waits} / {locks.samples} ({locks.max_waiting})",
            ],
            [
                f"starvation: {len(alone)} short runs alone, latency p50 / p95 (s)",
                f"{_percentile(alone, 0.5):.3f} / {alone_p95:.3f}",
            ],
            [
                f"starvation: {len(beside)} short runs beside a {LONG_RUN_STEPS}-step run, p50 / p95 (s)",
                f"{_percentile(beside, 0.5):.3f} / {beside_p95:.3f}",
            ],
            [f"starvation: the {LONG_RUN_STEPS}-step run took (s), ended", f"{long_seconds:.1f}, {long_status}"],
        ],
    )
    goals = [
        Goal("B3", "runs_per_second", product.runs_per_second, ">=", 100),
        Goal("B3", "ratio_to_fair_peer", product.runs_per_second / peer.runs_per_second, ">=", 0.8),
        Goal("B3", "ratio_to_raw_drain", product.steps_per_second / drain_tasks_per_second, ">=", 0.5),
        Goal("B3", "advisory_lock_waits", float(locks.samples_with_waits), "<=", 0),
        Goal("B3", "starvation_p95_ratio", beside_p95 / alone_p95, "<=", 2),
    ]
    print_goals(goals)
    return goals
