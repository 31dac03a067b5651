"""The asynchronous step executor with a real inference worker: LLM steps run as coroutines, many at once in one
process whose Celery pool has a handful of threads, each claimed by a batched claim and finished once."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time

import pytest
import redis
from django.conf import settings

from apps.runs.models import Run, StepRun
from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish
from tests.support.processes import (
    REPO,
    free_port,
    http_ok,
    inference_server_argv,
    redis_url_with_db,
    running,
    service_env,
)
from workers import fleet

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

RUNS = 12
STEPS_IN_FLIGHT = 12
FIRST_TOKEN_MS = 1500  # long enough for every step to be waiting on its model at once
SCHEMA = {"type": "object", "properties": {"n": {"type": "number"}}, "required": ["n"]}
GRAPH = {
    "steps": [
        {"key": "write", "type": "llm.generate", "config": {"prompt": "Summarise {{ input.n }}.", "max_new_tokens": 4}}
    ]
}


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    current = peak = 0
    for _, change in events:
        current += change
        peak = max(peak, current)
    return peak


def test_llm_steps_run_as_coroutines_far_more_at_once_than_the_worker_has_threads(analyst, team):
    workflow = workflow_create(actor=analyst, name="Async", team=team)
    version = workflow_version_create(actor=analyst, workflow=workflow, graph=GRAPH, input_schema=SCHEMA)
    workflow_version_publish(actor=analyst, version=version)
    # A broker of its own: the session's worker, on every queue, must not take these steps.
    broker = redis_url_with_db(settings.REDIS_URL, 6)
    redis.Redis.from_url(broker).flushdb()
    inference_port = free_port()
    inference_url = f"http://127.0.0.1:{inference_port}"
    env = service_env(
        REDIS_URL=broker,
        CELERY_BROKER_URL=broker,
        AIOS_INFERENCE_URL=inference_url,
        AIOS_INFERENCE_CONCURRENCY=str(STEPS_IN_FLIGHT),
    )
    worker = fleet.workers(inference_workers=1, inference_concurrency=STEPS_IN_FLIGHT)[1]
    worker = dataclasses.replace(worker, concurrency=2)  # two Celery threads: far fewer than the steps
    threads = worker.concurrency
    start = (
        "from apps.accounts.models import User; from apps.runs.services import run_start; "
        "from apps.workflows.models import Workflow; "
        f"actor = User.objects.get(pk={analyst.pk}); workflow = Workflow.objects.get(pk={workflow.pk}); "
        f"[run_start(actor=actor, workflow=workflow, inputs={{'n': n}}) for n in range({RUNS})]"
    )
    with (
        running(
            "async-inference",
            inference_server_argv(inference_port, ttft_ms=FIRST_TOKEN_MS, tpot_ms=10),
            ready=lambda log: http_ok(f"{inference_url}/health"),
            env=env,
        ),
        running(
            "async-worker",
            worker.argv(extra=("--without-gossip", "--without-mingle", "--without-heartbeat")),
            ready=lambda log: " ready." in log,
            env=env,
        ),
    ):
        # Started by a process on the same broker (its outbox relays there), through the product's service.
        subprocess.run([sys.executable, "manage.py", "shell", "-c", start], cwd=REPO, env=env, check=True, timeout=120)
        deadline = time.monotonic() + 90
        runs = Run.objects.filter(workflow=workflow)
        while runs.filter(finished_at__isnull=True).exists() or runs.count() < RUNS:
            assert time.monotonic() < deadline, list(runs.values_list("pk", "status"))
            time.sleep(0.2)
    steps = list(StepRun.objects.filter(run__workflow=workflow))
    assert sorted(run.status for run in runs) == ["succeeded"] * RUNS, [(r.pk, r.error) for r in runs]
    assert all(step.lease_owner.endswith(":async") and step.attempt == 1 for step in steps)
    assert all(step.output["text"] for step in steps)
    # Every step waited FIRST_TOKEN_MS for its model: with a step per thread, at most `threads` could wait at
    # once; as coroutines, all of them did.
    peak = most_at_once([(s.started_at.timestamp(), s.finished_at.timestamp()) for s in steps])
    assert peak > threads, f"at most {peak} steps ran at once with {threads} Celery threads"
