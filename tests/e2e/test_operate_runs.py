"""In Chromium, from the run page: cancel a waiting run, restart a finished run from a step, resolve an
incident by skipping the step with a supplied output."""

from __future__ import annotations

import re
import time

import pytest
from django.utils import timezone
from playwright.sync_api import Browser, expect

from apps.runs.models import Incident, Run, StepRun
from apps.runs.services import run_start
from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish
from tests.conftest import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.django_db(transaction=True)]

SCHEMA = {"type": "object", "properties": {"n": {"type": "number"}}}


def publish(analyst, team, name, steps):
    workflow = workflow_create(actor=analyst, name=name, team=team)
    version = workflow_version_create(actor=analyst, workflow=workflow, graph={"steps": steps}, input_schema=SCHEMA)
    workflow_version_publish(actor=analyst, version=version)
    return workflow


def wait_for(run: Run, status: str, timeout: float = 30) -> Run:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run.refresh_from_db()
        if run.status == status:
            return run
        time.sleep(0.1)
    raise AssertionError(f"run {run.pk} is {run.status}, not {status}")


def test_cancel_restart_and_resolve_an_incident_from_the_run_page(
    asgi_server, celery_worker_process, analyst, team, browser: Browser
):
    delay = {"key": "wait", "type": "util.delay", "config": {"seconds": 3600}}
    after = {"key": "after", "type": "data.transform", "config": {"fields": {"x": "input.n + 1.0"}}}
    chain = [
        {"key": "a", "type": "data.transform", "config": {"fields": {"x": "input.n + 1.0"}}},
        {"key": "b", "type": "data.transform", "config": {"fields": {"y": "steps.a.x * 10.0"}}},
    ]
    waiting = run_start(actor=analyst, workflow=publish(analyst, team, "Waits", [delay, after]), inputs={"n": 1})[0]
    finished = run_start(actor=analyst, workflow=publish(analyst, team, "Chain", chain), inputs={"n": 1})[0]
    stuck = run_start(actor=analyst, workflow=publish(analyst, team, "Stuck", [delay, after]), inputs={"n": 1})[0]
    wait_for(finished, "succeeded")
    for run in (waiting, stuck):
        deadline = time.monotonic() + 30
        while run.step_runs.get(step_key="wait").state != "waiting" and time.monotonic() < deadline:
            time.sleep(0.1)
    # The stuck run's first step is handed to a person, as the sweeper does after the restart cap.
    step = stuck.step_runs.get(step_key="wait")
    StepRun.objects.filter(pk=step.pk).update(waiting_for="incident", fencing_token=step.fencing_token + 1)
    incident = Incident.objects.create(run=stuck, step_run=step, reason="The worker stopped responding 4 times.")

    page = browser.new_page()
    with page.context:
        page.goto(f"{asgi_server}/accounts/login/")
        page.get_by_label("Username").fill("ana")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", name="Welcome, Ana Analyst")).to_be_visible()

        page.goto(f"{asgi_server}/runs/{waiting.pk}/")
        expect(page.locator("#step-wait")).to_contain_text("waiting for timer")
        page.get_by_label("Reason for cancelling").fill("no longer needed")
        page.get_by_role("button", name="Cancel run").click()
        expect(page.get_by_text(f"Run #{waiting.pk} was cancelled.")).to_be_visible()
        expect(page.locator("#run-header")).to_have_attribute("data-status", "cancelled")

        page.goto(f"{asgi_server}/runs/{finished.pk}/")
        page.locator("#step-b").get_by_role("button", name="Restart from this step").click()
        page.wait_for_url(re.compile(r"/runs/\d+/$"))
        expect(page.get_by_text(f'restarts run #{finished.pk} from step "b"')).to_be_visible()
        expect(page.locator("#run-header")).to_have_attribute("data-status", "succeeded", timeout=30_000)
        expect(page.locator("#step-a")).to_contain_text("Output reused from the earlier run.")
        expect(page.locator("#run-output")).to_contain_text('"y": 20.0')

        page.goto(f"{asgi_server}/runs/{stuck.pk}/")
        expect(page.locator("#step-wait")).to_contain_text(f"Incident #{incident.pk}")
        page.get_by_label("Output to use instead (JSON)").fill("{not json")
        page.get_by_role("button", name="Skip with this output").click()
        expect(page.get_by_text("The output is not valid JSON.")).to_be_visible()
        page.get_by_label("Output to use instead (JSON)").fill('{"waited": "by hand"}')
        page.get_by_role("button", name="Skip with this output").click()
        expect(page.get_by_text(f"Incident #{incident.pk} resolved: skip.")).to_be_visible()
        expect(page.locator("#run-header")).to_have_attribute("data-status", "succeeded", timeout=30_000)
    restarted = Run.objects.get(restarted_from=finished)
    assert restarted.output == {"y": 20.0}
    incident.refresh_from_db()
    assert incident.resolution == "skip" and incident.resolved_by == analyst
    assert timezone.now() >= incident.resolved_at
