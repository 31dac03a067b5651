"""The inference server down: the step fails with a readable error, the run is kept, the chain records it."""

from __future__ import annotations

import pytest

from apps.audit.models import AuditEvent
from apps.runs.executor import step_run_execute
from apps.runs.models import Run
from apps.runs.services import run_start
from tests.support.processes import free_port


@pytest.mark.django_db
def test_unreachable_inference_server_fails_the_step_readably(settings, analyst, claims_workflow, sample_claim):
    # The executor runs in this process (the on_commit enqueue never fires inside a test transaction),
    # against a loopback port where nothing listens.
    settings.AIOS_INFERENCE_URL = f"http://127.0.0.1:{free_port()}"
    settings.AIOS_INFERENCE_TIMEOUT = 5
    run, _ = run_start(actor=analyst, workflow=claims_workflow, inputs={"claim_text": sample_claim})
    extract = run.step_runs.get(step_key="extract")
    step_run_execute(step_run_id=extract.pk)
    run.refresh_from_db()
    extract.refresh_from_db()
    assert run.status == Run.Status.FAILED and extract.state == "failed"
    assert "not reachable" in extract.error and settings.AIOS_INFERENCE_URL in extract.error
    assert run.step_runs.get(step_key="decide").state == "cancelled"  # never started: the run failed
    assert AuditEvent.objects.filter(verb="step.failed", target_id=str(run.pk)).exists()
    assert AuditEvent.objects.filter(verb="run.failed", target_id=str(run.pk)).exists()


@pytest.mark.django_db
def test_a_second_delivery_of_the_same_step_does_nothing(settings, analyst, claims_workflow, sample_claim):
    settings.AIOS_INFERENCE_URL = f"http://127.0.0.1:{free_port()}"
    run, _ = run_start(actor=analyst, workflow=claims_workflow, inputs={"claim_text": sample_claim})
    extract = run.step_runs.get(step_key="extract")
    step_run_execute(step_run_id=extract.pk)
    step_run_execute(step_run_id=extract.pk)
    extract.refresh_from_db()
    assert extract.attempt == 1
    assert AuditEvent.objects.filter(verb="step.failed", target_id=str(run.pk)).count() == 1
