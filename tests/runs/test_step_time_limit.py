"""A step's time limit holds on the asynchronous executor (security review M2): an LLM step whose model does not
answer is stopped at its `timeout_seconds`, and its executor slot is freed at once.

Celery's time limits never reach a coroutine, and the step-timeout timer only fails the step in the database;
without the executor's watchdog the coroutine would keep the process's only slot until the model answered
(here: not for ten minutes), and the next step would wait that long.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import pytest
import redis
from django.conf import settings

from apps.inference.models import ModelEndpoint
from apps.inference.services import endpoint_save
from apps.runs.models import Run
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

SILENT_FOR_MS = 600_000  # the slow server's first token comes after ten minutes
TIME_LIMIT = 2


def _publish(actor: Any, team: Any, name: str, step: dict[str, Any]) -> Any:
    workflow = workflow_create(actor=actor, name=name, team=team)
    version = workflow_version_create(
        actor=actor, workflow=workflow, graph={"steps": [step]}, input_schema={"type": "object", "properties": {}}
    )
    workflow_version_publish(actor=actor, version=version)
    return workflow


def _start(env: dict[str, str], actor_id: int, workflow_id: int) -> Run:
    code = (
        "from apps.accounts.models import User; from apps.runs.services import run_start; "
        "from apps.workflows.models import Workflow; "
        f"run = run_start(actor=User.objects.get(pk={actor_id}), workflow=Workflow.objects.get(pk={workflow_id}), "
        "inputs={})[0]; print('RUN', run.pk)"
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=REPO,
        env=env,
        check=True,
        timeout=120,
        capture_output=True,
        text=True,
    )
    return Run.objects.get(
        pk=int(next(line for line in result.stdout.splitlines() if line.startswith("RUN ")).split()[1])
    )


def _finished(run: Run, timeout: float) -> Run:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run.refresh_from_db()
        if run.is_finished:
            return run
        time.sleep(0.2)
    raise AssertionError(f"run {run.pk} still {run.status} after {timeout} s")


def test_an_llm_step_past_its_time_limit_is_stopped_and_frees_its_slot(analyst, team):
    slow_port = free_port()
    slow_url = f"http://127.0.0.1:{slow_port}"
    endpoint_save(
        actor=None,
        endpoint=ModelEndpoint(name="silent", kind="tgi", url=slow_url, timeout_seconds=900, max_in_flight=4),
    )
    endpoint_save(
        actor=None,
        endpoint=ModelEndpoint(name="quick", kind="tgi", url=settings.AIOS_INFERENCE_URL, is_default=True),
    )
    silent = _publish(
        analyst,
        team,
        "Silent model",
        {
            "key": "ask",
            "type": "llm.generate",
            "timeout_seconds": TIME_LIMIT,
            "config": {"prompt": "Anyone there?", "model": "silent", "max_new_tokens": 4},
        },
    )
    quick = _publish(
        analyst,
        team,
        "Quick model",
        {"key": "ask", "type": "llm.generate", "config": {"prompt": "Hello", "max_new_tokens": 4}},
    )
    broker = redis_url_with_db(settings.REDIS_URL, 10)
    redis.Redis.from_url(broker).flushdb()
    # One slot: the quick run's step can only start once the silent one's coroutine has ended.
    env = service_env(REDIS_URL=broker, CELERY_BROKER_URL=broker, AIOS_INFERENCE_CONCURRENCY="1")
    engine, inference = fleet.workers(inference_workers=1, inference_concurrency=1)[:2]
    extra = ("--without-gossip", "--without-mingle", "--without-heartbeat")
    with (
        running(
            "silent-inference",
            inference_server_argv(slow_port, ttft_ms=SILENT_FOR_MS, tpot_ms=10),
            ready=lambda log: http_ok(f"{slow_url}/health"),
            env=env,
        ),
        running("limit-engine", engine.argv(extra=extra), ready=lambda log: " ready." in log, env=env),
        running("limit-inference", inference.argv(extra=extra), ready=lambda log: " ready." in log, env=env),
    ):
        first = _start(env, analyst.pk, silent.pk)
        second = _start(env, analyst.pk, quick.pk)
        # Far less than the silent server's ten minutes: only a freed slot lets the second run finish in time.
        second = _finished(second, timeout=120)
        first = _finished(first, timeout=30)
    assert second.status == Run.Status.SUCCEEDED, second.error
    step = first.step_runs.get(step_key="ask")
    assert first.status == Run.Status.FAILED
    assert f"took longer than its {TIME_LIMIT} s time limit" in step.error, step.error
