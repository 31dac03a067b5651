"""Structured logs: every line a JSON object carrying the request id (web) and the run id (a worker executing a
step), from real web and worker processes; and the text format a developer's console keeps."""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import uuid
from typing import Any

import pytest

from apps.accounts.services import api_token_issue
from apps.core import context
from apps.core.telemetry.logs import ContextFilter, JsonFormatter, TextFormatter, logging_config
from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish
from tests.core.telemetry_stack import telemetry_stack, wait_for


def _record(message: str = "hello %s", args: tuple[Any, ...] = ("world",), **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("aios.test", logging.WARNING, __file__, 1, message, args, None)
    record.__dict__.update(extra)
    ContextFilter().filter(record)
    return record


def test_a_json_line_carries_the_context_ids_and_the_extras():
    request_token = context.request_id.set("req-123")
    run_token, step_token = context.run_id.set(42), context.step_key.set("extract")
    try:
        line = JsonFormatter().format(_record(amount=3, when=object()))
    finally:
        context.request_id.reset(request_token)
        context.run_id.reset(run_token)
        context.step_key.reset(step_token)
    entry = json.loads(line)
    assert entry["message"] == "hello world"
    assert entry["level"] == "WARNING" and entry["logger"] == "aios.test"
    assert entry["request_id"] == "req-123" and entry["run_id"] == 42 and entry["step_key"] == "extract"
    assert entry["amount"] == 3
    assert entry["when"].startswith("<object object")  # not JSON: written as text, the line kept
    assert entry["time"].endswith("+00:00")
    assert "\n" not in line


def test_a_json_line_holds_its_traceback_and_leaves_out_unset_ids():
    try:
        raise ValueError("broken")
    except ValueError:
        record = logging.LogRecord("aios.test", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    ContextFilter().filter(record)
    entry = json.loads(JsonFormatter().format(record))
    assert "ValueError: broken" in entry["exception"]
    assert "request_id" not in entry and "run_id" not in entry


def test_the_text_format_appends_the_ids_to_the_first_line():
    token = context.run_id.set(7)
    try:
        line = TextFormatter().format(_record())
    finally:
        context.run_id.reset(token)
    assert line.endswith("WARNING aios.test hello world [run=7]")
    assert TextFormatter().format(_record()).endswith("hello world")


def test_an_unknown_log_format_is_refused():
    with pytest.raises(ValueError, match="log format"):
        logging_config(log_format="xml", level="INFO")


GRAPH = {
    "steps": [
        {"key": "double", "type": "data.transform", "config": {"fields": {"twice": "input.n * 2"}}},
        {
            "key": "write",
            "type": "llm.generate",
            "config": {"prompt": "Say something about {{ input.n }}.", "max_new_tokens": 8},
        },
    ]
}
NUMBER = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


def _json_lines(text: str) -> list[dict[str, Any]]:
    entries = []
    for line in text.splitlines():
        if line.startswith("{"):
            entries.append(json.loads(line))  # a line that starts as JSON must be JSON
    return entries


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(180)
def test_web_and_worker_lines_are_json_with_the_request_and_run_ids(analyst, team):
    workflow = workflow_create(actor=analyst, name="Logged workflow", team=team)
    version = workflow_version_create(actor=analyst, workflow=workflow, graph=GRAPH, input_schema=NUMBER)
    workflow_version_publish(actor=analyst, version=version)
    token = api_token_issue(user=analyst, name="t", lifetime_days=7)[1]
    request_id = f"logs-{uuid.uuid4().hex[:12]}"
    # DEBUG shows the one line per step execution; the model call's HTTP line (another library's, at INFO) is
    # written inside the step too.
    with telemetry_stack("logs", redis_db=10, AIOS_LOG_FORMAT="json", AIOS_LOG_LEVEL="DEBUG") as stack:
        status, _ = stack.request("GET", "/no-such-page/", headers={"X-Request-ID": request_id})
        assert status == 404
        status, answer = stack.request(
            "POST", f"/api/workflows/{workflow.slug}/runs/", token=token, body={"inputs": {"n": 4}}
        )
        assert status == 201, answer
        run_id = answer["id"]

        def step_lines() -> list[dict[str, Any]]:
            entries = _json_lines(stack.worker_log.read_text())
            return [entry for entry in entries if entry.get("run_id") == run_id and "ran for" in entry["message"]]

        lines = wait_for(lambda: len(step_lines()) == 2 and step_lines(), timeout=90, what="both steps' log lines")
        web_text = stack.web_log.read_text()
        worker_text = stack.worker_log.read_text()

    assert {entry["step_key"] for entry in lines} == {"double", "write"}  # the engine's and the async executor's
    for entry in lines:
        assert entry["service"] == "worker"
        assert entry["logger"] == "apps.core.telemetry.tracing"
        assert entry["message"].startswith(f"step {entry['step_key']} of run {run_id} ran for ")
    model_calls = [
        entry
        for entry in _json_lines(worker_text)
        if entry["logger"] == "httpx2" and entry["message"].startswith("HTTP Request: POST")
    ]
    assert model_calls and all(entry.get("run_id") == run_id for entry in model_calls), model_calls
    assert {entry["step_key"] for entry in model_calls} == {"write"}
    # The request id is ours, with the caller's X-Request-ID kept only as a hash after it (apps/core/middleware.py).
    caller_hash = hashlib.sha256(request_id.encode()).hexdigest()[:12]
    web_entries = [
        entry for entry in _json_lines(web_text) if str(entry.get("request_id", "")).endswith(f".{caller_hash}")
    ]
    assert web_entries, web_text[-2000:]
    assert any(entry["logger"] == "django.request" and "Not Found" in entry["message"] for entry in web_entries)
    assert all(entry["service"] == "web" for entry in web_entries)
    # Celery's own lines go through the same formatter.
    celery_lines = [line for line in worker_text.splitlines() if "Task runs.execute_step[" in line]
    assert celery_lines and all(json.loads(line)["logger"].startswith("celery") for line in celery_lines)
