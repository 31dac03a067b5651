"""The inference server answering with errors: overloaded, a failed generation, a stream that breaks off.

A development inference server of this module's own, with a script that faults prompts carrying a marker,
answers the executor, which runs in this process (the on_commit enqueue never fires inside a test
transaction). Each step fails with a sentence a person can act on, the run is kept as failed, and the audit
chain records both; a retry policy turns a retryable error into a scheduled retry instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from apps.audit.models import AuditEvent
from apps.runs.executor import step_run_execute
from apps.runs.models import Run, StepResult, StepRun, Timer
from apps.runs.services import run_start
from tests.support.processes import free_port, http_ok, inference_server_argv, running

MIDSTREAM_REPLY = {
    "claimant": "Maria Lopez",
    "policy_number": "POL-10442",
    "incident_type": "auto",
    "amount": 850.0,
    "injury_reported": False,
    "summary": "Rear-end collision in a parking lot; no one was injured.",
}
FAULT_AFTER_TOKENS = 6

FAULT_SCRIPT = {
    "rules": [
        {"name": "overloaded", "match": {"contains": "FAULT-OVERLOADED"}, "fault": "overloaded"},
        {"name": "generation", "match": {"contains": "FAULT-GENERATION"}, "fault": "generation"},
        {
            "name": "midstream",
            "match": {"contains": "FAULT-MIDSTREAM"},
            "response": {"json": MIDSTREAM_REPLY},
            "fault": "midstream",
            "fault_after_tokens": FAULT_AFTER_TOKENS,
        },
    ]
}


@pytest.fixture(scope="module")
def faulty_inference_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A development inference server that faults on the markers of FAULT_SCRIPT; yields its URL."""
    script = tmp_path_factory.mktemp("inference-errors") / "faults.json"
    script.write_text(json.dumps(FAULT_SCRIPT), encoding="utf-8")
    port = free_port()
    argv = inference_server_argv(port, ttft_ms=5, tpot_ms=2)
    argv[argv.index("--script") + 1] = str(script)
    url = f"http://127.0.0.1:{port}"
    with running(
        "inference-errors",
        argv,
        ready=lambda log: http_ok(f"{url}/health"),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ):
        yield url


@pytest.fixture(params=["tgi", "openai-compatible"])
def faulty_inference(request: pytest.FixtureRequest, settings: Any, faulty_inference_url: str) -> str:
    """Settings pointing at the faulty server, over TGI's native route and over the chat route."""
    settings.AIOS_INFERENCE_KIND = request.param
    settings.AIOS_INFERENCE_URL = faulty_inference_url
    settings.AIOS_INFERENCE_TIMEOUT = 10
    return faulty_inference_url


def claim(marker: str) -> str:
    return f"Claimant: Maria Lopez. Policy POL-10442. {marker}\nAnother car reversed into my parked car."


def extract_and_run(analyst: Any, workflow: Any, claim_text: str) -> tuple[Run, StepRun]:
    run, _ = run_start(actor=analyst, workflow=workflow, inputs={"claim_text": claim_text})
    extract = run.step_runs.get(step_key="extract")
    assert extract.state == StepRun.State.QUEUED
    step_run_execute(step_run_id=extract.pk)
    run.refresh_from_db()
    extract.refresh_from_db()
    return run, extract


def audit_verbs(run: Run) -> list[str]:
    return list(AuditEvent.objects.filter(target_id=str(run.pk), target_type="runs.run").values_list("verb", flat=True))


def assert_failed_and_recorded(run: Run, extract: StepRun) -> None:
    assert extract.state == StepRun.State.FAILED and extract.waiting_for == ""
    assert extract.attempt == 1 and extract.finished_at is not None
    assert run.status == Run.Status.FAILED and run.finished_at is not None
    assert run.error == f'Step "extract" failed: {extract.error}'
    assert run.step_runs.get(step_key="decide").state == StepRun.State.CANCELLED
    assert extract.result.outcome == "failed"  # the immutable StepResult
    verbs = audit_verbs(run)
    assert "step.failed" in verbs and "run.failed" in verbs
    assert "step.retry_scheduled" not in verbs  # the default policy allows one attempt


@pytest.mark.django_db
def test_overloaded_server_fails_the_step_readably(faulty_inference, analyst, claims_workflow):
    run, extract = extract_and_run(analyst, claims_workflow, claim("FAULT-OVERLOADED"))
    assert_failed_and_recorded(run, extract)
    assert "overloaded" in extract.error and "try again" in extract.error
    assert faulty_inference in extract.error
    assert extract.streamed_text == ""


@pytest.mark.django_db
def test_failed_generation_fails_the_step_readably(faulty_inference, analyst, claims_workflow):
    run, extract = extract_and_run(analyst, claims_workflow, claim("FAULT-GENERATION"))
    assert_failed_and_recorded(run, extract)
    assert "failed while generating" in extract.error and "the model backend failed" in extract.error
    assert extract.streamed_text == ""


@pytest.mark.django_db
def test_stream_broken_off_midway_keeps_the_tokens_that_arrived(faulty_inference, analyst, claims_workflow):
    run, extract = extract_and_run(analyst, claims_workflow, claim("FAULT-MIDSTREAM"))
    assert_failed_and_recorded(run, extract)
    assert "failed while generating" in extract.error
    # What the viewer saw before the break is kept with the failed step, not thrown away.
    full_reply = json.dumps(MIDSTREAM_REPLY, ensure_ascii=False)
    assert extract.streamed_text and full_reply.startswith(extract.streamed_text)
    assert len(extract.streamed_text) < len(full_reply)
    assert extract.result.error == extract.error


@pytest.fixture
def retrying_workflow(analyst: Any, team: Any) -> Any:
    """One llm.generate step that may be attempted twice, with no backoff."""
    from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish

    workflow = workflow_create(actor=analyst, name="Ask once more", team=team)
    version = workflow_version_create(
        actor=analyst,
        workflow=workflow,
        graph={
            "steps": [
                {
                    "key": "ask",
                    "type": "llm.generate",
                    "config": {"prompt": "{{ input.question }}", "max_new_tokens": 32},
                    "retry": {"max_attempts": 2, "backoff_seconds": 0},
                }
            ]
        },
        input_schema={"type": "object", "properties": {"question": {"type": "string"}}, "required": ["question"]},
    )
    workflow_version_publish(actor=analyst, version=version)
    return workflow


@pytest.mark.django_db
def test_overloaded_server_with_a_retry_policy_schedules_a_retry(faulty_inference, analyst, retrying_workflow):
    run, _ = run_start(
        actor=analyst, workflow=retrying_workflow, inputs={"question": "FAULT-OVERLOADED: are you busy?"}
    )
    ask = run.step_runs.get(step_key="ask")
    step_run_execute(step_run_id=ask.pk)
    run.refresh_from_db()
    ask.refresh_from_db()

    assert ask.state == StepRun.State.WAITING and ask.waiting_for == "retry"
    assert ask.attempt == 1 and "overloaded" in ask.error
    assert run.status == Run.Status.RUNNING and run.finished_at is None
    timer = Timer.objects.get(step_run=ask)
    assert timer.kind == Timer.Kind.RETRY and timer.fired_at is None
    assert timer.fencing_token == ask.fencing_token
    assert not StepResult.objects.filter(step_run=ask).exists()  # not finished: no result yet
    verbs = audit_verbs(run)
    assert "step.retry_scheduled" in verbs
    assert "step.failed" not in verbs and "run.failed" not in verbs
