"""B3: 2,000 concurrent 3-step runs through the trigger API, drained by the default deployment's workers.

Product: POST /api/workflows/<slug>/runs/ with token authentication, through DRF's APIClient in this process
(the whole Django request path, minus the HTTP server and socket), one request after another while the
workers drain; throughput is counted from the first POST to the last Run.finished_at. Workers are the two
`deploy/devstack.py run` starts: `-Q engine,default,connectors -c 2` (prefork) and `-Q inference -P threads
-c 16`. Peer: 3 x N no-op Celery tasks pre-queued on the same broker, then consumed by the same engine worker
(`add_consumer`), timed until the last one ran. BENCH_SCALE shrinks N for a quick check.
"""

from __future__ import annotations

import os
import time

import redis

from bench.common import Goal, bench_user, linear_workflow, print_goals, table
from bench.stack import Services

STEPS = 3
RUNS = max(30, int(2000 * float(os.environ.get("BENCH_SCALE", "1"))))
DRAIN_TIMEOUT_SECONDS = 900.0
# A run whose step's worker transaction died (a deadlock victim) stays running until its lease expires and
# the sweeper (not started by the bench) takes it back; the drain stops when nothing finished for this long.
STALL_SECONDS = 30.0


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


def run(svc: Services, engine_worker_name: str) -> list[Goal]:
    from django.db.models import F, Max
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    from apps.runs.models import Run

    peer_tasks_per_second = peer_drain(svc, RUNS * STEPS, engine_worker_name)

    actor = bench_user()
    steps = [{"key": f"s{i}", "type": "data.transform", "config": {"fields": {"n": "1"}}} for i in range(STEPS)]
    workflow = linear_workflow(actor, f"B3 {STEPS} steps {time.time_ns()}", steps)
    token, _ = Token.objects.get_or_create(user=actor)
    client = APIClient(SERVER_NAME="127.0.0.1")
    client.raise_request_exception = False  # a 500 is counted, as an HTTP client would see it
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    url = f"/api/workflows/{workflow.slug}/runs/"
    warm = client.post(url, {"inputs": {}}, format="json")
    if warm.status_code != 201:
        raise RuntimeError(f"POST {url} answered {warm.status_code}: {warm.content[:500]!r}")
    time.sleep(1)
    first_id = Run.objects.filter(workflow=workflow).aggregate(top=Max("pk"))["top"]

    started = time.time()
    refused: dict[int, int] = {}
    for _ in range(RUNS):
        # Django logs each 500 with its traceback; the bench counts them instead of stopping.
        response = client.post(url, {"inputs": {}}, format="json")
        if response.status_code != 201:
            refused[response.status_code] = refused.get(response.status_code, 0) + 1
    submitted = time.time()
    runs = Run.objects.filter(workflow=workflow, pk__gt=first_id)
    deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
    last_progress, last_left = time.monotonic(), -1
    while (left := runs.filter(finished_at__isnull=True).count()) > 0:
        if left != last_left:
            last_progress, last_left = time.monotonic(), left
        if time.monotonic() - last_progress > STALL_SECONDS or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    stuck = left
    runs = runs.filter(finished_at__isnull=False)
    latencies = [
        d.total_seconds()
        for d in runs.annotate(latency=F("finished_at") - F("started_at")).values_list("latency", flat=True)
    ]
    last = runs.aggregate(last=Max("finished_at"))["last"].timestamp()
    failed = runs.exclude(status="succeeded").count()
    elapsed = last - started
    finished = runs.count()
    runs_per_second = finished / elapsed
    steps_per_second = finished * STEPS / elapsed
    table(
        f"B3 {RUNS} runs x {STEPS} steps via the trigger API (APIClient in-process, token auth)",
        ["measure", "value"],
        [
            ["submission (POSTs/s, one client)", f"{RUNS / (submitted - started):.0f}"],
            ["first POST -> last run finished (s)", f"{elapsed:.2f}"],
            ["runs/s", f"{runs_per_second:.1f}"],
            ["steps/s", f"{steps_per_second:.1f}"],
            ["run latency p50 (s)", f"{_percentile(latencies, 0.5):.3f}"],
            ["run latency p95 (s)", f"{_percentile(latencies, 0.95):.3f}"],
            ["runs finished / not succeeded", f"{finished} / {failed}"],
            ["POSTs refused (status: count)", ", ".join(f"{k}: {v}" for k, v in refused.items()) or "none"],
            [f"runs stuck (no progress for {STALL_SECONDS:g} s)", str(stuck)],
            [f"peer: drain of {RUNS * STEPS} pre-queued no-op tasks (tasks/s)", f"{peer_tasks_per_second:.0f}"],
        ],
    )
    goals = [
        Goal("B3", "ratio_to_peer", steps_per_second / peer_tasks_per_second, ">=", 0.5),
        Goal("B3", "runs_per_second", runs_per_second, ">=", 220),
    ]
    print_goals(goals)
    return goals
