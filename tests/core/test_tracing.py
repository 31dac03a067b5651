"""One trace per run across processes: the web request that starts it, the worker that executes its steps and the
model calls they make, exported over OTLP/HTTP to a receiver on a real socket that parses the protobuf; and a run
whose step reached the worker only through the sweeper's relay of the outbox still joins its own trace."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from celery import Celery, current_app
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from apps.accounts.services import api_token_issue
from apps.core.telemetry import logs, tracing
from apps.runs.models import Outbox, Run
from apps.runs.services import run_start
from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish
from tests.core.telemetry_stack import telemetry_stack, wait_for
from tests.support.processes import REPO, free_port, redis_url_with_db


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    attributes: dict[str, Any]


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


class OtlpReceiver:
    """An OTLP/HTTP trace receiver: POST /v1/traces with a protobuf ExportTraceServiceRequest."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
                    self.send_response(404)
                    self.end_headers()
                    return
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver.add(request)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, request: ExportTraceServiceRequest) -> None:
        with self.lock:
            for resource_spans in request.resource_spans:
                resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append(
                            ReceivedSpan(
                                service=str(resource.get("service.name")),
                                trace_id=span.trace_id.hex(),
                                span_id=span.span_id.hex(),
                                parent_span_id=span.parent_span_id.hex(),
                                name=span.name,
                                attributes={a.key: _value(a.value) for a in span.attributes},
                            )
                        )

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self.lock:
            return [span for span in self.spans if span.trace_id == trace_id]


@pytest.fixture
def otlp_receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    receiver.thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()


GRAPH = {
    "steps": [
        {"key": "prepare", "type": "data.transform", "config": {"fields": {"topic": "'claims'"}}},
        {
            "key": "write",
            "type": "llm.generate",
            "config": {"prompt": "Write one line about {{ steps.prepare.topic }}.", "max_new_tokens": 12},
        },
    ]
}
EMPTY = {"type": "object", "properties": {}}
REDIS_DB = 11


def _trace_id(run: Run) -> str:
    version, trace_id, parent_span_id, _flags = run.traceparent.split("-")
    assert version == "00" and len(trace_id) == 32 and len(parent_span_id) == 16
    return trace_id


def _complete(receiver: OtlpReceiver, trace_id: str) -> list[ReceivedSpan] | None:
    spans = receiver.trace(trace_id)
    names = {span.name for span in spans}
    return spans if {"step prepare", "step write"} <= names and any(n.startswith("model call") for n in names) else None


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(240)
def test_one_trace_holds_the_web_request_the_worker_and_the_model_call(analyst, team, otlp_receiver, settings):
    workflow = workflow_create(actor=analyst, name="Traced workflow", team=team)
    version = workflow_version_create(actor=analyst, workflow=workflow, graph=GRAPH, input_schema=EMPTY)
    workflow_version_publish(actor=analyst, version=version)
    token = api_token_issue(user=analyst, name="t", lifetime_days=7)[1]
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "200",  # milliseconds between exports, so the test need not wait long
    }
    with telemetry_stack("tracing", redis_db=REDIS_DB, **otel) as stack:
        # 1. Started by a web request: the request's span is the run's parent.
        status, answer = stack.request(
            "POST", f"/api/workflows/{workflow.slug}/runs/", token=token, body={"inputs": {}}
        )
        assert status == 201, answer
        run = Run.objects.get(pk=answer["id"])
        trace_id = _trace_id(run)
        spans = wait_for(lambda: _complete(otlp_receiver, trace_id), timeout=90, what="the run's trace")
        assert wait_for(lambda: Run.objects.get(pk=run.pk).status == "succeeded", timeout=30, what="the run")

        # 2. Started where no span is active, while the broker is unreachable from the process that started it
        # (a real dead address, not a stand-in): its first step reaches the worker only through the sweeper's
        # relay of the outbox, in another trace's task, yet the step joins the run's own trace.
        settings.AIOS_OTEL_ENABLED = True  # this process only records the trace context; it exports nothing
        assert tracing.traceparent_of_current_span() == ""
        default_app = current_app._get_current_object()
        Celery(broker=f"redis://127.0.0.1:{free_port()}/0").set_current()
        try:
            relayed, _ = run_start(actor=analyst, workflow=workflow, inputs={})
        finally:
            default_app.set_current()
        assert Outbox.objects.filter(relayed_at__isnull=True, task="runs.execute_step").exists()
        stack_broker = Celery(broker=redis_url_with_db(settings.REDIS_URL, REDIS_DB), set_as_current=False)
        wait_for(lambda: _relayed_or_sweep(stack_broker), timeout=60, what="the sweeper to relay the outbox row")
        relayed_trace = _trace_id(relayed)
        relayed_spans = wait_for(lambda: _complete(otlp_receiver, relayed_trace), timeout=90, what="the relayed trace")

    by_service: dict[str, list[ReceivedSpan]] = {}
    for span in spans:
        by_service.setdefault(span.service, []).append(span)
    assert {"aios-web", "aios-worker"} <= set(by_service), {s: [x.name for x in v] for s, v in by_service.items()}
    assert any("POST" in span.name for span in by_service["aios-web"]), [s.name for s in by_service["aios-web"]]
    steps = {span.name: span for span in spans if span.name.startswith("step ")}
    recorded_parent = run.traceparent.split("-")[2]
    assert recorded_parent in {span.span_id for span in by_service["aios-web"]}  # a span of the web process
    # Delivered by Celery from within the run, each step nests under the task that brought it, and the chain of
    # parents leads back to the web request: web → publish → worker task → step → publish → task → step → call.
    by_id = {span.span_id: span for span in spans}
    for key in ("step prepare", "step write"):
        assert steps[key].service == "aios-worker"
        task = by_id[steps[key].parent_span_id]
        assert task.name == "run/runs.execute_step" and task.service == "aios-worker", task
        assert recorded_parent in _ancestors(by_id, steps[key]), key
    assert steps["step write"].attributes["aios.run_id"] == run.pk
    (model_call,) = [span for span in spans if span.name.startswith("model call")]
    assert model_call.service == "aios-worker"
    assert model_call.parent_span_id == steps["step write"].span_id
    assert model_call.attributes["aios.endpoint"] == "default"
    assert model_call.attributes["gen_ai.usage.output_tokens"] > 0
    assert model_call.attributes["aios.ttft_ms"] >= 0
    assert "gen_ai.request.model" in model_call.attributes

    assert "aios-web" not in {span.service for span in relayed_spans}  # no web request took part
    relayed_steps = {span.name: span for span in relayed_spans if span.name.startswith("step ")}
    # The sweeper's task that sent it belongs to another trace: the step's parent is what the run recorded.
    assert relayed_steps["step prepare"].parent_span_id == relayed.traceparent.split("-")[2]
    assert "runs.sweep" not in " ".join(span.name for span in relayed_spans)
    assert any(span.name.startswith("model call") for span in relayed_spans)


def _ancestors(by_id: dict[str, ReceivedSpan], span: ReceivedSpan) -> list[str]:
    chain = []
    while span.parent_span_id:
        chain.append(span.parent_span_id)
        if span.parent_span_id not in by_id:
            break
        span = by_id[span.parent_span_id]
    return chain


def _relayed_or_sweep(broker: Celery) -> bool:
    """Whether the run's first step left the outbox; if not, ring the sweeper again (beat is not running)."""
    if not Outbox.objects.filter(task="runs.execute_step", relayed_at__isnull=True).exists():
        return True
    broker.send_task("runs.sweep", queue="default")
    return False


# --- off by default ---------------------------------------------------------------------------------------------


def _settings_value(name: str, **env: str) -> str:
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("AIOS_", "OTEL_"))}
    # Development mode, with its keys generated in a directory of the test's own (production needs keys set).
    environment.update(
        env, DJANGO_SETTINGS_MODULE="aios_web.settings", AIOS_ENV="development", AIOS_DATA_DIR=tempfile.mkdtemp()
    )
    code = f"from django.conf import settings; print(settings.{name})"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=environment, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_tracing_is_off_unless_an_endpoint_or_the_switch_says_so():
    assert _settings_value("AIOS_OTEL_ENABLED") == "False"
    assert _settings_value("AIOS_OTEL_ENABLED", OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:4318") == "True"
    assert _settings_value("AIOS_OTEL_ENABLED", OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="http://c:4318/v1/traces") == "True"
    assert _settings_value("AIOS_OTEL_ENABLED", AIOS_OTEL_ENABLED="1") == "True"
    assert (
        _settings_value("AIOS_OTEL_ENABLED", OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:4318", AIOS_OTEL_ENABLED="0")
        == "False"
    )


def test_with_tracing_off_a_run_records_no_trace_and_nothing_is_configured(settings):
    settings.AIOS_OTEL_ENABLED = False
    assert tracing.traceparent_for_new_run() == ""
    try:
        assert tracing.configure("web") is False
    finally:
        logs.service_set("")  # configure() names the process's role on log lines; this one is pytest
    with tracing.model_call_span(endpoint="default", model="m", protocol="chat") as span:
        assert not span.is_recording()
