"""`/metrics`: who may read it, and that what it says, parsed by Prometheus' own text parser, is the seeded state
of the database and Redis, read at scrape time with a pinned number of queries."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.test import APIClient

from apps.accounts.roles import ADMIN
from apps.core.telemetry import metrics as core_metrics
from apps.core.telemetry import store
from apps.inference import limits
from apps.inference import metrics as inference_metrics
from apps.inference.errors import InferenceOverloadedError, InferenceTimeoutError
from apps.inference.models import InferenceCall
from apps.runs.lifecycle import step_run_claim
from apps.runs.models import Incident, Outbox, Run, StepRun, Timer
from apps.runs.services import run_start
from apps.runs.sweeper import sweep
from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish
from tests.support.engine import drive

NUMBER = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
# One step: 10 / n succeeds for n != 0 and fails the run for n = 0 (division by zero).
DIVIDE = {"steps": [{"key": "divide", "type": "data.transform", "config": {"fields": {"q": "10 / input.n"}}}]}
# What one scrape may ask the database: seven engine queries, the model-call window, the endpoints' names.
SCRAPE_QUERIES = 9


def scrape() -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """The exposition, parsed by prometheus_client's parser: sample name → {sorted labels: value}."""
    text = core_metrics.exposition().decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[str, Any], name: str, **labels: str) -> float:
    return samples[name][tuple(sorted(labels.items()))]


def _publish(analyst: Any, team: Any) -> Any:
    workflow = workflow_create(actor=analyst, name="Metrics divide", team=team)
    version = workflow_version_create(actor=analyst, workflow=workflow, graph=DIVIDE, input_schema=NUMBER)
    workflow_version_publish(actor=analyst, version=version)
    return workflow


def _call(endpoint: str, status: str, *, ttft_ms: float | None, latency_ms: float, prompt: int, generated: int) -> None:
    InferenceCall.objects.create(
        endpoint_name=endpoint,
        endpoint_url="http://127.0.0.1:9",
        protocol="chat",
        input_sha256="0" * 64,
        status=status,
        ttft_ms=ttft_ms,
        latency_ms=latency_ms,
        prompt_tokens=prompt,
        generated_tokens=generated,
        cost=Decimal("0"),
    )


@pytest.fixture
def seeded(analyst: Any, team: Any) -> dict[str, Any]:
    """Two runs succeeded, one failed, one with its step queued; an open and a resolved incident; a timer due
    30 s ago; an outbox row unsent for 90 s; three model calls of one endpoint."""
    workflow = _publish(analyst, team)
    for n in (1, 2, 0):
        run, _ = run_start(actor=analyst, workflow=workflow, inputs={"n": n})
        drive(run)
    queued_run, _ = run_start(actor=analyst, workflow=workflow, inputs={"n": 5})
    step = StepRun.objects.get(run=queued_run)
    Incident.objects.create(run=queued_run, step_run=step, reason="seeded, open")
    Incident.objects.create(run=queued_run, step_run=step, reason="seeded, resolved", resolved_at=timezone.now())
    now = timezone.now()
    Timer.objects.create(kind=Timer.Kind.DELAY, run=queued_run, step_run=step, fire_at=now - timedelta(seconds=30))
    Outbox.objects.filter(relayed_at__isnull=True).update(relayed_at=now)  # what the engine wrote: sent
    Outbox.objects.create(task="runs.execute_step", queue="connectors", args=[step.pk])
    Outbox.objects.filter(queue="connectors").update(created_at=now - timedelta(seconds=90))
    _call("metrics-ep", "ok", ttft_ms=80, latency_ms=400, prompt=100, generated=20)
    _call("metrics-ep", "ok", ttft_ms=300, latency_ms=1200, prompt=50, generated=30)
    _call("metrics-ep", "error", ttft_ms=None, latency_ms=0, prompt=0, generated=0)
    return {"workflow": workflow, "queued_run": queued_run, "step": step}


def test_engine_and_inference_series_match_the_seeded_state(seeded):
    statuses = dict(Run.objects.values_list("pk", "status"))
    assert sorted(statuses.values()) == ["failed", "running", "succeeded", "succeeded"], statuses

    with CaptureQueriesContext(connection) as queries:
        samples = scrape()
    assert len(queries) == SCRAPE_QUERIES, [q["sql"] for q in queries]

    assert value(samples, "aios_runs_recent", status="succeeded") == 2
    assert value(samples, "aios_runs_recent", status="failed") == 1
    assert value(samples, "aios_runs_recent", status="running") == 1
    assert value(samples, "aios_runs_recent", status="cancelled") == 0
    assert value(samples, "aios_runs_active", status="running") == 1
    assert value(samples, "aios_runs_active", status="pending") == 0
    assert value(samples, "aios_step_runs_active", state="queued") == 1
    assert value(samples, "aios_step_runs_active", state="running") == 0
    assert value(samples, "aios_metrics_window_seconds") == 3600
    assert value(samples, "aios_queue_depth", queue="engine", step_type="data.transform") == 1
    assert 0 <= value(samples, "aios_queue_oldest_age_seconds", queue="engine") < 60
    assert value(samples, "aios_outbox_unrelayed", queue="connectors") == 1
    assert 90 <= value(samples, "aios_outbox_lag_seconds", queue="connectors") < 150
    assert ("queue", "engine") not in {label for labels in samples["aios_outbox_unrelayed"] for label in labels}
    assert value(samples, "aios_timers_due") == 1
    assert 30 <= value(samples, "aios_timers_due_oldest_age_seconds") < 90
    assert value(samples, "aios_incidents_open") == 1
    assert value(samples, "aios_incidents_total") == 2

    assert value(samples, "aios_inference_calls", endpoint="metrics-ep", status="ok") == 2
    assert value(samples, "aios_inference_calls", endpoint="metrics-ep", status="error") == 1
    assert value(samples, "aios_inference_prompt_tokens", endpoint="metrics-ep") == 150
    assert value(samples, "aios_inference_generated_tokens", endpoint="metrics-ep") == 50
    # Cumulative buckets: 80 ms and 300 ms to the first token; 0.4 s and 1.2 s in all.
    assert value(samples, "aios_inference_ttft_seconds_bucket", endpoint="metrics-ep", le="0.05") == 0
    assert value(samples, "aios_inference_ttft_seconds_bucket", endpoint="metrics-ep", le="0.1") == 1
    assert value(samples, "aios_inference_ttft_seconds_bucket", endpoint="metrics-ep", le="0.25") == 1
    assert value(samples, "aios_inference_ttft_seconds_bucket", endpoint="metrics-ep", le="0.5") == 2
    assert value(samples, "aios_inference_ttft_seconds_bucket", endpoint="metrics-ep", le="+Inf") == 2
    assert value(samples, "aios_inference_ttft_seconds_gsum", endpoint="metrics-ep") == pytest.approx(0.38)
    assert value(samples, "aios_inference_latency_seconds_bucket", endpoint="metrics-ep", le="0.5") == 1
    assert value(samples, "aios_inference_latency_seconds_bucket", endpoint="metrics-ep", le="1") == 1
    assert value(samples, "aios_inference_latency_seconds_bucket", endpoint="metrics-ep", le="2.5") == 2
    assert value(samples, "aios_inference_latency_seconds_gcount", endpoint="metrics-ep") == 2
    assert value(samples, "aios_inference_window_truncated") == 0
    # The serving process's own metrics come along.
    assert "process_cpu_seconds_total" in samples


def test_a_scrape_reads_no_more_than_its_bound(seeded, settings):
    """With a scan bound of one row, only the newest run and the newest call count, and the truncation is reported."""
    settings.AIOS_METRICS_SCAN_ROWS = 1
    samples = scrape()
    assert sum(samples["aios_runs_recent"].values()) == 1
    assert value(samples, "aios_runs_recent", status="running") == 1  # the queued run is the newest
    calls = {labels: count for labels, count in samples["aios_inference_calls"].items()}
    assert sum(calls.values()) == 1
    assert value(samples, "aios_inference_calls", endpoint="metrics-ep", status="error") == 1
    assert value(samples, "aios_inference_window_truncated") == 1


def test_lease_takeovers_and_the_sweeper_figures_come_from_the_real_sweeper(seeded):
    before = scrape().get("aios_lease_takeovers_total", {}).get((), 0.0)
    step = step_run_claim(step_run_id=seeded["step"].pk, worker="metrics-test")
    assert step is not None
    StepRun.objects.filter(pk=step.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=5))
    started = time.time()
    report = sweep()
    assert report["lease_expired"] == 1
    samples = scrape()
    assert value(samples, "aios_lease_takeovers_total") == before + 1
    assert started <= value(samples, "aios_sweeper_last_finished_timestamp_seconds") <= time.time()
    assert 0 < value(samples, "aios_sweeper_last_duration_seconds") < 30
    assert value(samples, "aios_sweeper_seconds_since_last_sweep") < 30
    assert value(samples, "aios_sweeps_total") >= 1


def test_errors_by_kind_and_calls_in_flight_come_from_redis(db):
    def count(samples: dict[str, Any], kind: str) -> float:
        return samples.get("aios_inference_errors_total", {}).get(
            tuple(sorted({"endpoint": "metrics-flight", "kind": kind}.items())), 0.0
        )

    before = scrape()
    asyncio.run(inference_metrics.error_count("metrics-flight", InferenceTimeoutError("slow")))
    asyncio.run(inference_metrics.error_count("metrics-flight", InferenceTimeoutError("slow again")))
    asyncio.run(inference_metrics.error_count("metrics-flight", InferenceOverloadedError("busy")))

    held, release = threading.Event(), threading.Event()

    def hold_a_slot() -> None:
        async def hold() -> None:
            async with limits.in_flight_slot("metrics-flight", 4, wait_seconds=5):
                held.set()
                await asyncio.get_running_loop().run_in_executor(None, release.wait, 10)

        asyncio.run(hold())

    holder = threading.Thread(target=hold_a_slot)
    holder.start()
    try:
        assert held.wait(10)
        _call("metrics-flight", "ok", ttft_ms=10, latency_ms=20, prompt=1, generated=1)
        samples = scrape()
    finally:
        release.set()
        holder.join(10)
    assert count(samples, "timeout") == count(before, "timeout") + 2
    assert count(samples, "overloaded") == count(before, "overloaded") + 1
    assert value(samples, "aios_inference_in_flight", endpoint="metrics-flight") == 1
    assert value(scrape(), "aios_inference_in_flight", endpoint="metrics-flight") == 0


def test_error_kinds_name_each_inference_failure():
    assert inference_metrics.error_kind(InferenceTimeoutError("x")) == "timeout"
    assert inference_metrics.error_kind(InferenceOverloadedError("x")) == "overloaded"
    assert inference_metrics.error_kind(ValueError("x")) == "ValueError"


# --- who may read it ------------------------------------------------------------------------------------------


def test_the_admin_role_name_is_the_accounts_one():
    assert core_metrics.ADMIN_ROLE == ADMIN


@pytest.mark.django_db
def test_admins_and_the_token_read_metrics_everyone_else_gets_404(settings, admin_user_role, analyst, manager, auditor):
    settings.AIOS_METRICS_TOKEN = "scrape-token-0123456789"
    anonymous = APIClient()
    assert anonymous.get("/metrics").status_code == 404
    assert anonymous.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong-token").status_code == 404
    assert anonymous.get("/metrics", HTTP_AUTHORIZATION="Basic scrape-token-0123456789").status_code == 404
    response = anonymous.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-token-0123456789")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert b"# HELP aios_runs_active " in response.content
    for person in (analyst, manager, auditor):
        client = APIClient()
        client.force_login(person)
        assert client.get("/metrics").status_code == 404, person.username
    admin = APIClient()
    admin.force_login(admin_user_role)
    assert admin.get("/metrics").status_code == 200
    assert admin.post("/metrics").status_code == 405


@pytest.mark.django_db
def test_without_a_token_configured_a_bearer_header_opens_nothing(settings, admin_user_role):
    settings.AIOS_METRICS_TOKEN = ""
    assert APIClient().get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 404
    assert APIClient().get("/metrics", HTTP_AUTHORIZATION="Bearer x").status_code == 404
    admin = APIClient()
    admin.force_login(admin_user_role)
    assert admin.get("/metrics").status_code == 200


def test_sweeper_figures_survive_redis_being_away(db, settings):
    """A sweep whose figures cannot be written still completes; a scrape without Redis still answers."""
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    store.sweep_record(started=time.time(), finished=time.time(), lease_takeovers=1, incidents=0)
    samples = scrape()
    assert "aios_runs_active" in samples
    assert "aios_lease_takeovers_total" not in samples
