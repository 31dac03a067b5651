"""Per-request and per-step context that the audit chain and the logs read without threading arguments through
every service."""

from __future__ import annotations

from contextvars import ContextVar

request_id: ContextVar[str | None] = ContextVar("aios_request_id", default=None)
# Set while a worker executes a step of a run (apps/core/telemetry/tracing.py:step_scope), so every log line
# written meanwhile, in any module, names the run and the step.
run_id: ContextVar[int | None] = ContextVar("aios_run_id", default=None)
step_key: ContextVar[str | None] = ContextVar("aios_step_key", default=None)
