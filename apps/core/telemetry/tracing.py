"""OpenTelemetry traces: one trace per run, across the web request that started it, the Celery tasks that execute
its steps, and its model calls. Off unless configured (AIOS_OTEL_ENABLED, set by default when the standard
OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is); exported over OTLP/HTTP (protobuf).

How a run's trace survives the database hand-off: a run records the W3C `traceparent` of the context it was
created in (`Run.traceparent`, filled by `traceparent_for_new_run`: the web request's span, or the step that
started a child run). Whichever worker executes one of its steps, however the step reached it (sent right after
commit, relayed by the sweeper minutes later, taken back from a dead worker), `step_scope` opens the step's span in
that trace: under the Celery task span that delivered it when that task was sent from within the run (Celery's
instrumentation carries the context in the message), else directly under the recorded context. The model calls
inside a step are children of its span. The run's trace never depends on the message, which is what lets a
relayed step still join its run.

Every process calls `configure(role)` once at start-up (web: aios_web/asgi.py; worker and beat: the Celery
signals in workers/celery.py), which names it `aios-<role>` to the trace backend.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from django.conf import settings
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from apps.core import context
from apps.core.telemetry import logs

logger = logging.getLogger(__name__)

TRACER_NAME = "aios"
_propagator = TraceContextTextMapPropagator()
_configured_lock = threading.Lock()
_configured_role: str | None = None


def enabled() -> bool:
    """Whether this deployment exports traces (AIOS_OTEL_ENABLED)."""
    return bool(getattr(settings, "AIOS_OTEL_ENABLED", False))


def configure(role: str) -> bool:
    """Set up tracing for this process once: its service name (`aios-<role>`), the OTLP/HTTP exporter, and the
    Django, Celery and psycopg instrumentation. Also names the role on log lines. Returns whether tracing is on.

    Called before Django loads its middleware in the web process (the Django instrumentation adds one). A worker
    that forks its pool after this keeps working: the SDK's batch processor restarts its thread in each child."""
    global _configured_role
    logs.service_set(role)
    if not enabled():
        return False
    with _configured_lock:
        if _configured_role is not None:
            return True
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = Resource.create(
            {
                "service.name": f"{settings.AIOS_OTEL_SERVICE_NAME}-{role}",
                "service.namespace": settings.AIOS_OTEL_SERVICE_NAME,
                "aios.process.role": role,
            }
        )
        provider = TracerProvider(resource=resource)
        # The exporter reads the standard OTEL_EXPORTER_OTLP_* variables (endpoint, headers, timeout) itself.
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
        _instrument()
        _configured_role = role
    logger.info("traces are exported over OTLP/HTTP as service %s-%s", settings.AIOS_OTEL_SERVICE_NAME, role)
    return True


def _instrument() -> None:
    # Each instrumentation is worth having but none is essential: one that fails to load (a version mismatch)
    # is logged and the others still trace.
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

    # Health probes and scrapes every few seconds would drown the traces that matter.
    for instrumentor, options in (
        (DjangoInstrumentor(), {"excluded_urls": "/healthz$,/readyz$,/metrics$,/static/"}),
        (CeleryInstrumentor(), {}),
        (PsycopgInstrumentor(), {"enable_commenter": False}),
    ):
        try:
            if not instrumentor.is_instrumented_by_opentelemetry:
                instrumentor.instrument(**options)
        except Exception:
            logger.warning("could not enable %s", type(instrumentor).__name__, exc_info=True)


def flush(timeout_seconds: float = 5.0) -> None:
    """Export the spans still buffered (at shutdown; the batch processor otherwise sends every few seconds)."""
    provider = trace.get_tracer_provider()
    force_flush = getattr(provider, "force_flush", None)
    if force_flush is not None:
        force_flush(int(timeout_seconds * 1000))


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def traceparent_of_current_span() -> str:
    """The W3C traceparent of the span in context, or "" when there is none."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent", "")


def traceparent_for_new_run() -> str:
    """What a new run records as its trace context (the default of `Run.traceparent`).

    The span in context when the run is created (the web request, the step that starts a child run), or, for a
    run started where no span is active (a schedule fired by the sweeper, a command), a new trace of its own, so
    its steps still share one trace. Empty when tracing is off: then nothing is recorded and nothing is paid."""
    if not enabled():
        return ""
    current = traceparent_of_current_span()
    if current:
        return current
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def _parent_context(traceparent: str) -> otel_context.Context | None:
    """The context a step's span starts in: the span in context when it belongs to the run's trace already (the
    Celery task that delivered the step, sent from within the run), so the trace shows each hop; else the run's
    recorded context (a step relayed by the sweeper arrives in the sweep's trace, or in none)."""
    if not traceparent:
        return None
    recorded = _propagator.extract({"traceparent": traceparent})
    current = trace.get_current_span().get_span_context()
    if current.is_valid and current.trace_id == trace.get_current_span(recorded).get_span_context().trace_id:
        return None
    return recorded


@contextlib.contextmanager
def step_scope(
    *, run_id: int, step_key: str, traceparent: str = "", attributes: Mapping[str, Any] | None = None
) -> Iterator[None]:
    """While a worker executes one step of a run: the run and step ids on every log line, and, with tracing on,
    the step's span as a child of the run's recorded trace context (whatever process or delivery brought the
    step here). Nests: a step's eager successor opens its own scope."""
    run_token = context.run_id.set(run_id)
    step_token = context.step_key.set(step_key)
    started = time.perf_counter()
    try:
        if enabled():
            span_attributes = {"aios.run_id": run_id, "aios.step_key": step_key, **(attributes or {})}
            with tracer().start_as_current_span(
                f"step {step_key}",
                context=_parent_context(traceparent),
                kind=trace.SpanKind.INTERNAL,
                attributes=span_attributes,
            ):
                yield
        else:
            yield
    finally:
        # One line per step execution at DEBUG (AIOS_LOG_LEVEL=DEBUG): at INFO, formatting and writing it would
        # cost a sequential step a few percent of its time. workers/fleet.py ROUTINE_LINES keeps it off the
        # development console when it is on.
        logger.debug("step %s of run %s ran for %.3f s", step_key, run_id, time.perf_counter() - started)
        context.step_key.reset(step_token)
        context.run_id.reset(run_token)


@contextlib.contextmanager
def model_call_span(*, endpoint: str, model: str, protocol: str) -> Iterator[trace.Span]:
    """The span around one call to a model server (a child of the step's span). Yields the span so the caller
    can add what is known only afterwards (tokens, time to first token); a no-op span when tracing is off."""
    if not enabled():
        yield trace.INVALID_SPAN
        return
    with tracer().start_as_current_span(
        f"model call {endpoint}",
        kind=trace.SpanKind.CLIENT,
        attributes={"aios.endpoint": endpoint, "gen_ai.request.model": model, "aios.protocol": protocol},
    ) as span:
        yield span
