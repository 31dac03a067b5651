"""Structured logs: one JSON object per line, carrying the request id and the run id, in web and workers alike.

The standard library's logging does the work; this module adds a filter that copies the ids of the current
context (apps.core.context: the request a web process serves, the run and step a worker executes) onto every
record, whichever logger wrote it (ours, Django's, Celery's), and two formatters: JSON for machines (the
production default) and text for a developer's console (the development default, which the embedded launcher's
line filters read; see workers/fleet.py ROUTINE_LINES). `AIOS_LOG_FORMAT=json|text` chooses.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from typing import Any

from apps.core import context

LOG_FORMATS = ("json", "text")

# Attributes every LogRecord has; anything else on a record came from `extra=` and is worth keeping.
_STANDARD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "request_id",
    "run_id",
    "step_key",
    "service",
    "trace_id",
    "span_id",
}

# The process's role (web, worker, beat, or a management command's name), set once at start-up.
_service = os.environ.get("AIOS_PROCESS_ROLE", "")


def service_set(role: str) -> None:
    """Name this process's role on every log line from now on (web, worker, beat)."""
    global _service
    _service = role


def _trace_ids() -> tuple[str | None, str | None]:
    """The current span's trace and span ids, when tracing is on and a span is recording."""
    try:
        from opentelemetry import trace
    except ImportError:  # pragma: no cover - opentelemetry-api is a pinned requirement
        return None, None
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None, None
    return f"{span_context.trace_id:032x}", f"{span_context.span_id:016x}"


class ContextFilter(logging.Filter):
    """Puts `request_id`, `run_id`, `step_key`, `service`, `trace_id` and `span_id` on every record.

    A filter on the handler, not on a logger, so records of every logger that reaches the handler get them."""

    def filter(self, record: logging.LogRecord) -> bool:
        # Django logs a 4xx/5xx response (django.request) after the middleware that set the context has
        # returned; such records carry the request itself, which carries its id.
        record.request_id = context.request_id.get() or getattr(getattr(record, "request", None), "request_id", None)
        record.run_id = context.run_id.get()
        record.step_key = context.step_key.get()
        record.service = _service or None
        record.trace_id, record.span_id = _trace_ids()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the context's ids, the
    exception's traceback when there is one, and whatever the call passed in `extra`."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ("service", "request_id", "run_id", "step_key", "trace_id", "span_id"):
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        entry["process"] = record.process
        for name, value in record.__dict__.items():
            if name not in _STANDARD_ATTRIBUTES and not name.startswith("_"):
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: a value passed in `extra` that JSON cannot represent is written as text, never dropped
        # with the whole line.
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The developer's console line: time, level, logger and message, then the run and request ids when set."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = [
            f"{name}={value}"
            for name, value in (
                ("run", getattr(record, "run_id", None)),
                ("step", getattr(record, "step_key", None)),
                ("request", getattr(record, "request_id", None)),
            )
            if value is not None
        ]
        if not ids:
            return line
        # The ids go after the first line, so a traceback that follows stays as it was.
        first, newline, rest = line.partition("\n")
        return f"{first} [{' '.join(ids)}]{newline}{rest}"


def logging_config(*, log_format: str, level: str) -> dict[str, Any]:
    """The LOGGING setting: every record through one console handler, in `log_format` (json or text)."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {LOG_FORMATS}, not {log_format!r}")
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": "apps.core.telemetry.logs.ContextFilter"}},
        "formatters": {
            "json": {"()": "apps.core.telemetry.logs.JsonFormatter"},
            "text": {"()": "apps.core.telemetry.logs.TextFormatter"},
        },
        "handlers": {
            "console": {"class": "logging.StreamHandler", "formatter": log_format, "filters": ["context"]},
        },
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            "django.db.backends": {"level": "WARNING"},
            # uvicorn installs handlers of its own before Django starts; these put its lines (errors, and access
            # lines when enabled) through ours, in the same format.
            **{
                name: {"handlers": ["console"], "propagate": False}
                for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
            },
        },
    }
