"""Testing without fear: test runs of a draft (whole, or one step) on the real engine, with pinned data and
recorded runs, that never reach the outside world unless allowed and never leak into versions or live runs."""

from __future__ import annotations

import pytest
from django.test import Client

from apps.approvals.models import ApprovalRequest
from apps.core.exceptions import ApplicationError, Forbidden
from apps.runs.draft_tests import run_test_start
from apps.runs.models import Run, StepRun
from apps.runs.services import run_start
from apps.workflows.exchange import document_build, document_dump
from apps.workflows.models import PinnedOutput
from apps.workflows.services import (
    pinned_output_set,
    workflow_create,
    workflow_draft_save,
    workflow_version_publish,
)
from tests.support.engine import drive, states
from tests.support.sink import Sink

pytestmark = pytest.mark.django_db

INPUT_SCHEMA = {
    "type": "object",
    "properties": {"amount": {"type": "number", "title": "Amount"}},
    "required": ["amount"],
    "examples": [{"label": "Small", "amount": 120.0}],
}


def graph(url: str) -> dict:
    return {
        "steps": [
            {
                "key": "score",
                "type": "data.transform",
                "name": "Score",
                "config": {"fields": {"risk": "input.amount / 100.0"}},
            },
            {"key": "check", "type": "logic.if", "name": "Risky?", "config": {"condition": "steps.score.risk > 5.0"}},
            {"key": "review", "type": "human.approval", "name": "Review", "config": {"queue": "team:claims"}},
            {
                "key": "post",
                "type": "http.request",
                "name": "Post to the ERP",
                "config": {"method": "POST", "url": url, "body": '{"risk": {{ steps.score.risk }}}'},
            },
        ],
        "edges": [
            {"from": "score", "to": "check"},
            {"from": "check", "to": "review", "when": "true"},
            {"from": "check", "to": "post", "when": "false"},
        ],
    }


@pytest.fixture
def sink(tmp_path, settings):
    settings.AIOS_HTTP_ALLOWLIST = ["127.0.0.1/32"]  # so a call that should not happen would really land
    with Sink(tmp_path / "sink.sqlite3") as running:
        yield running


@pytest.fixture
def drafted(analyst, team, sink):
    workflow = workflow_create(actor=analyst, name="ERP posting", team=team)
    workflow_draft_save(
        actor=analyst,
        workflow=workflow,
        graph=graph(f"{sink.url}/invoices"),
        input_schema=INPUT_SCHEMA,
        expected_revision=None,
    )
    return workflow


def test_a_test_run_never_calls_out_unless_that_step_is_allowed(analyst, drafted, sink):
    run = drive(run_test_start(actor=analyst, workflow=drafted, inputs={"amount": 120.0}))
    assert run.is_test and run.mode == "test" and run.status == "succeeded"
    post = StepRun.objects.get(run=run, step_key="post")
    assert post.output["simulated"] is True
    assert post.output["request"] == {"method": "POST", "url": f"{sink.url}/invoices", "body": '{"risk": 1.2}'}
    assert post.usage == {"test": "simulated"}
    assert sink.deliveries() == []  # the HTTP sink saw nothing
    allowed = drive(run_test_start(actor=analyst, workflow=drafted, inputs={"amount": 120.0}, allow_calls=["post"]))
    assert allowed.status == "succeeded"
    assert len(sink.deliveries()) == 1


def test_approvals_are_simulated_in_tests_and_never_reach_a_queue(analyst, drafted):
    run = drive(run_test_start(actor=analyst, workflow=drafted, inputs={"amount": 900.0}, allow_calls=["review"]))
    assert states(run)["review"] == "succeeded"
    assert StepRun.objects.get(run=run, step_key="review").output["decision"] == "approved"
    assert not ApprovalRequest.objects.exists()


def test_pinned_data_stands_in_for_the_step_in_tests_only(analyst, drafted, sink):
    pinned_output_set(actor=analyst, workflow=drafted, step_key="score", output={"risk": 9.0})
    run = drive(run_test_start(actor=analyst, workflow=drafted, inputs={"amount": 120.0}))
    assert StepRun.objects.get(run=run, step_key="score").output == {"risk": 9.0}
    assert states(run)["review"] == "succeeded" and states(run)["post"] == "skipped"  # the pinned risk routed it
    # Publishing: the pinned data is not in the version, its export or its checksum.
    draft = drafted.versions.get(state="draft")
    version = workflow_version_publish(actor=analyst, version=draft, note="v1")
    assert "9.0" not in str(version.graph) and "pinned" not in document_dump(document_build(drafted, version))
    # A live run of the published version executes the step for real.
    live, _ = run_start(actor=analyst, workflow=drafted, inputs={"amount": 120.0})
    live = drive(live)
    assert StepRun.objects.get(run=live, step_key="score").output == {"risk": 1.2}
    assert not live.is_test and live.test_settings == {}
    assert PinnedOutput.objects.filter(workflow=drafted).count() == 1


def test_a_test_run_executes_the_draft_as_it_was_when_it_started(analyst, drafted, sink):
    run = run_test_start(actor=analyst, workflow=drafted, inputs={"amount": 120.0})
    changed = graph(f"{sink.url}/invoices")
    changed["steps"][0]["config"]["fields"]["risk"] = "input.amount"
    workflow_draft_save(
        actor=analyst, workflow=drafted, graph=changed, input_schema=INPUT_SCHEMA, expected_revision=None
    )
    run = drive(run)
    assert StepRun.objects.get(run=run, step_key="score").output == {"risk": 1.2}


def test_one_step_with_the_recorded_outputs_of_an_earlier_run(analyst, drafted):
    version = workflow_version_publish(actor=analyst, version=drafted.versions.get(state="draft"))
    live = drive(run_start(actor=analyst, workflow=drafted, inputs={"amount": 700.0})[0])
    assert live.status == "running"  # waiting at the approval
    workflow_draft_save(
        actor=analyst, workflow=drafted, graph=version.graph, input_schema=INPUT_SCHEMA, expected_revision=None
    )
    run = drive(run_test_start(actor=analyst, workflow=drafted, inputs=None, step_key="check", recorded_run=live))
    assert run.status == "succeeded" and run.inputs == {"amount": 700.0}
    rows = {row.step_key: row for row in StepRun.objects.filter(run=run)}
    assert set(rows) == {"score", "check"}  # the step alone, with what it reads
    assert rows["score"].usage == {"test": "recorded", "recorded_run": live.pk}
    assert rows["check"].output == {"branch": "true"}
    assert run.output == {"branch": "true"}


def test_one_step_needs_data_for_the_steps_it_reads(analyst, drafted):
    with pytest.raises(ApplicationError, match='reads the output of "score", "check"'):
        run_test_start(actor=analyst, workflow=drafted, inputs={"amount": 1.0}, step_key="review")
    pinned_output_set(actor=analyst, workflow=drafted, step_key="score", output={"risk": 7.0})
    pinned_output_set(actor=analyst, workflow=drafted, step_key="check", output={"branch": "true"})
    run = drive(run_test_start(actor=analyst, workflow=drafted, inputs={"amount": 1.0}, step_key="review"))
    assert run.status == "succeeded" and run.output["simulated"] is True


def test_tests_are_the_editors_and_need_a_runnable_draft(analyst, reviewer, drafted):
    with pytest.raises(Forbidden):
        run_test_start(actor=reviewer, workflow=drafted, inputs={"amount": 1.0})
    broken = graph("http://example.invalid")
    broken["steps"][0]["config"]["fields"]["risk"] = "input.amount +"
    workflow_draft_save(
        actor=analyst, workflow=drafted, graph=broken, input_schema=INPUT_SCHEMA, expected_revision=None
    )
    with pytest.raises(ApplicationError, match="fix its problems") as refusal:
        run_test_start(actor=analyst, workflow=drafted, inputs={"amount": 1.0})
    assert refusal.value.extra["problems"]
    with pytest.raises(ApplicationError, match="does not fit"):
        run_test_start(actor=analyst, workflow=drafted, inputs={"amount": "lots"}, step_key="check")


def test_the_builder_starts_tests_with_a_sample_and_lands_on_the_run_page(analyst, reviewer, drafted):
    client = Client()
    client.force_login(analyst)
    page = client.get(f"/workflows/{drafted.slug}/edit/").content.decode()
    assert "Test the workflow" in page and "Sample: Small" in page and "Really call out from" in page
    response = client.post(f"/runs/test/{drafted.slug}/", {"source": "sample:0"})
    run = Run.objects.get(mode="test")
    assert response.status_code == 302 and response["Location"] == f"/runs/{run.pk}/"
    assert run.inputs == {"amount": 120.0} and run.initiator == analyst
    api = client.get(f"/api/runs/{run.pk}/").json()
    assert api["mode"] == "test"
    response = client.post(f"/runs/test/{drafted.slug}/", {"source": "sample:0", "step": "review"})
    assert response.status_code == 302 and "step=review" in response["Location"]
    assert "reads the output of" in client.get(response["Location"]).content.decode()
    other = Client()
    other.force_login(reviewer)
    assert other.post(f"/runs/test/{drafted.slug}/", {"source": "sample:0"}).status_code == 403


def test_pinning_through_the_step_panel(analyst, drafted):
    client = Client()
    client.force_login(analyst)
    client.get(f"/workflows/{drafted.slug}/edit/")
    response = client.post(f"/workflows/{drafted.slug}/edit/steps/check/pin/", {"output": '{"branch": "false"'})
    assert "not valid JSON" in client.get(response["Location"]).content.decode()
    assert not PinnedOutput.objects.exists()
    client.post(f"/workflows/{drafted.slug}/edit/steps/check/pin/", {"output": '{"branch": "false"}'})
    assert PinnedOutput.objects.get().output == {"branch": "false"}
    page = client.get(f"/workflows/{drafted.slug}/edit/?step=check").content.decode()
    assert "Pinned by Ana" in page and "pinned test data" in page
    client.post(f"/workflows/{drafted.slug}/edit/steps/check/pin/", {"action": "unpin"})
    assert not PinnedOutput.objects.exists()


def test_test_runs_are_marked_on_the_run_page_and_in_lists(analyst, drafted):
    pinned_output_set(actor=analyst, workflow=drafted, step_key="score", output={"risk": 1.0})
    run = drive(run_test_start(actor=analyst, workflow=drafted, inputs={"amount": 120.0}))
    client = Client()
    client.force_login(analyst)
    page = client.get(f"/runs/{run.pk}/").content.decode()
    assert f"Test run #{run.pk}" in page and "A test of the draft" in page
    assert "the pinned test data stands in for it" in page
    assert "Simulated in this test" in page
    listing = client.get("/runs/").content.decode()
    assert f'#{run.pk}</a> <span class="badge badge--test">Test</span>' in listing
