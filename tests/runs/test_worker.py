"""Runs executed by a real Celery worker process against the development inference server."""

from __future__ import annotations

import time

import pytest
from django.core.management import call_command

from apps.audit.models import AuditEvent
from apps.runs.models import Run
from apps.runs.services import run_start
from apps.workflows.demo import SAMPLE_CLAIMS

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def wait_finished(run: Run, timeout: float = 60) -> Run:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run.refresh_from_db()
        if run.is_finished:
            return run
        time.sleep(0.1)
    raise AssertionError(f"run {run.pk} still {run.status} after {timeout} s")


def test_claims_demo_runs_to_completion_on_a_real_worker(celery_worker_process, analyst, claims_workflow):
    runs = [
        run_start(actor=analyst, workflow=claims_workflow, inputs={"claim_text": sample["claim_text"]})[0]
        for sample in SAMPLE_CLAIMS
    ]
    routes = {}
    for run in runs:
        run = wait_finished(run)
        assert run.status == Run.Status.SUCCEEDED, run.error
        extract = run.step_runs.get(step_key="extract")
        assert extract.output["data"]["policy_number"] in run.inputs["claim_text"]
        assert extract.streamed_text == extract.output["text"]
        assert extract.usage["generated_tokens"] > 0 and extract.usage["model_id"]
        routes[run.output["policy_number"]] = run.output["route"]
        verbs = list(
            AuditEvent.objects.filter(target_id=str(run.pk), target_type="runs.run").values_list("verb", flat=True)
        )
        assert verbs == ["run.started", "step.succeeded", "step.succeeded", "run.succeeded"]
    assert routes == {
        "POL-10442": "auto_approve",
        "POL-20917": "adjuster_queue",
        "POL-31808": "adjuster_queue",
        "POL-48230": "auto_approve",
    }
    call_command("verify_audit")


def test_a_step_error_fails_the_run_readably_and_keeps_it(celery_worker_process, analyst, claims_workflow):
    """An expression that fails at run time fails the step with a message naming step, field and expression."""
    from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish

    workflow = workflow_create(actor=analyst, name="Broken expression")
    version = workflow_version_create(
        actor=analyst,
        workflow=workflow,
        graph={"steps": [{"key": "calc", "type": "data.transform", "config": {"fields": {"x": "input.missing + 1"}}}]},
        input_schema={"type": "object", "properties": {"note": {"type": "string"}}},
    )
    workflow_version_publish(actor=analyst, version=version)
    run = wait_finished(run_start(actor=analyst, workflow=workflow, inputs={"note": "hi"})[0])
    assert run.status == Run.Status.FAILED
    step = run.step_runs.get()
    assert step.state == "failed"
    assert 'Step "calc", field "x": the expression `input.missing + 1` failed' in step.error
    assert run.error.startswith('Step "calc" failed:')
    assert AuditEvent.objects.filter(verb="run.failed", target_id=str(run.pk)).exists()
