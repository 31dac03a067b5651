"""Operating runs through the API: cancel, restart from a step, incidents. Refusals are 409 with a reason."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from apps.audit.models import AuditEvent
from apps.runs.lifecycle import step_run_claim
from apps.runs.models import Incident, Run, StepRun
from apps.runs.services import run_start
from apps.runs.sweeper import leases_reclaim
from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish
from tests.support.engine import drive, states

SCHEMA = {"type": "object", "properties": {"n": {"type": "number"}}}
GRAPH = {
    "steps": [
        {"key": "a", "type": "data.transform", "config": {"fields": {"x": "input.n + 1.0"}}},
        {"key": "b", "type": "data.transform", "config": {"fields": {"y": "steps.a.x * 10.0"}}},
        {"key": "c", "type": "data.transform", "config": {"fields": {"z": "steps.b.y + 1.0"}}},
    ]
}


@pytest.fixture
def workflow(analyst, team):
    workflow = workflow_create(actor=analyst, name="Three steps", team=team)
    version = workflow_version_create(actor=analyst, workflow=workflow, graph=GRAPH, input_schema=SCHEMA)
    workflow_version_publish(actor=analyst, version=version)
    return workflow


@pytest.fixture
def api(analyst):
    client = APIClient()
    client.force_authenticate(analyst)
    return client


def test_cancel_an_unfinished_run_and_409_for_a_finished_one(api, analyst, workflow):
    run, _ = run_start(actor=analyst, workflow=workflow, inputs={"n": 1})
    response = api.post(f"/api/runs/{run.pk}/cancel/", {"reason": "wrong input"}, format="json")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert set(states(run).values()) == {"cancelled"}
    again = api.post(f"/api/runs/{run.pk}/cancel/", {}, format="json")
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]
    assert AuditEvent.objects.filter(verb="run.cancelled", target_id=str(run.pk)).count() == 1


def test_restart_from_a_step_reuses_earlier_outputs(api, analyst, workflow):
    run = drive(run_start(actor=analyst, workflow=workflow, inputs={"n": 1})[0])
    assert run.output == {"z": 21.0}
    running = run_start(actor=analyst, workflow=workflow, inputs={"n": 2})[0]
    refused = api.post(f"/api/runs/{running.pk}/restart/", {"step_key": "b"}, format="json")
    assert refused.status_code == 409 and "still running" in refused.json()["detail"]
    response = api.post(f"/api/runs/{run.pk}/restart/", {"step_key": "b"}, format="json")
    assert response.status_code == 201
    new = Run.objects.get(pk=response.json()["id"])
    assert new.restarted_from == run and new.restart_step_key == "b"
    a = new.step_runs.get(step_key="a")
    assert a.state == "succeeded" and a.reused_from == run.step_runs.get(step_key="a") and a.attempt == 0
    new = drive(new)
    assert new.output == {"z": 21.0} and new.step_runs.get(step_key="b").attempt == 1
    unknown = api.post(f"/api/runs/{run.pk}/restart/", {"step_key": "nope"}, format="json")
    assert unknown.status_code == 400


@override_settings(AIOS_STEP_RESTART_CAP=1)
def test_incident_after_the_restart_cap_and_its_three_resolutions(api, analyst, workflow):
    def stranded_run() -> tuple[Run, Incident]:
        run = run_start(actor=analyst, workflow=workflow, inputs={"n": 1})[0]
        step = run.step_runs.get(step_key="a")
        later = timezone.now() + timedelta(hours=1)
        for _ in range(2):  # a worker claims and dies, twice; the sweeper takes the step back, then gives up
            step_run_claim(step_run_id=step.pk, worker="doomed")
            leases_reclaim(later)
        step.refresh_from_db()
        assert (step.state, step.waiting_for, step.restarts) == ("waiting", "incident", 1)
        return run, Incident.objects.get(step_run=step, resolved_at__isnull=True)

    run, incident = stranded_run()
    assert api.post(f"/api/incidents/{incident.pk}/resolve/", {"action": "retry"}, format="json").status_code == 200
    assert drive(run).status == "succeeded"

    run, incident = stranded_run()
    skip = {"action": "skip", "output": {"x": 100.0}}
    assert api.post(f"/api/incidents/{incident.pk}/resolve/", skip, format="json").status_code == 200
    run = drive(run)
    assert run.output == {"z": 1001.0}

    run, incident = stranded_run()
    assert api.post(f"/api/incidents/{incident.pk}/resolve/", {"action": "abort"}, format="json").status_code == 200
    run.refresh_from_db()
    assert run.status == "cancelled"
    twice = api.post(f"/api/incidents/{incident.pk}/resolve/", {"action": "retry"}, format="json")
    assert twice.status_code == 409 and "already resolved" in twice.json()["detail"]
    verbs = set(AuditEvent.objects.filter(verb__startswith="incident.").values_list("verb", flat=True))
    assert verbs == {"incident.retried", "incident.skipped", "incident.aborted"}


def test_viewers_who_may_not_run_the_workflow_cannot_operate(manager, outsider, analyst, workflow):
    run, _ = run_start(actor=analyst, workflow=workflow, inputs={"n": 1})
    for user, status in [(manager, 403), (outsider, 404)]:
        client = APIClient()
        client.force_authenticate(user)
        assert client.post(f"/api/runs/{run.pk}/cancel/", {}, format="json").status_code == status
    assert StepRun.objects.filter(run=run, state="cancelled").count() == 0


def test_reviewers_read_runs_but_do_not_operate_them(reviewer, analyst, workflow):
    run, _ = run_start(actor=analyst, workflow=workflow, inputs={"n": 1})
    client = APIClient()
    client.force_authenticate(reviewer)
    assert client.get(f"/api/runs/{run.pk}/").status_code == 200
    assert client.post(f"/api/runs/{run.pk}/cancel/", {}, format="json").status_code == 403
    finished = drive(run_start(actor=analyst, workflow=workflow, inputs={"n": 2})[0])
    assert client.post(f"/api/runs/{finished.pk}/restart/", {"step_key": "b"}, format="json").status_code == 403
    assert not Run.objects.filter(restarted_from=finished).exists()


@override_settings(AIOS_STEP_RESTART_CAP=0)
def test_skipping_with_an_output_needs_edit_rights_and_an_output_that_fits(analyst, team, workflow):
    from apps.accounts.services import user_create
    from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish

    # Bea builds workflows too and may run her team's, but this one is Ana's: she may retry or abort it,
    # not decide what its step produced.
    bea = user_create(username="bea", password="correct-horse-battery-staple", roles=["analyst"])
    bea.groups.add(team.group)
    extract = workflow_create(actor=analyst, name="Extract", team=team)
    graph = {
        "steps": [
            {
                "key": "x",
                "type": "llm.extract",
                "config": {
                    "prompt": "Extract the claim: {{ input.text }}",
                    "json_schema": {
                        "type": "object",
                        "properties": {"amount": {"type": "number"}},
                        "required": ["amount"],
                    },
                },
            },
            {"key": "route", "type": "data.transform", "config": {"fields": {"big": "steps.x.data.amount > 100.0"}}},
        ]
    }
    version = workflow_version_create(
        actor=analyst,
        workflow=extract,
        graph=graph,
        input_schema={"type": "object", "properties": {"text": {"type": "string"}}},
    )
    workflow_version_publish(actor=analyst, version=version)
    run = run_start(actor=analyst, workflow=extract, inputs={"text": "claim"})[0]
    step = run.step_runs.get(step_key="x")
    step_run_claim(step_run_id=step.pk, worker="doomed")
    leases_reclaim(timezone.now() + timedelta(hours=1))
    incident = Incident.objects.get(step_run=step, resolved_at__isnull=True)
    url = f"/api/incidents/{incident.pk}/resolve/"

    bea_client = APIClient()
    bea_client.force_authenticate(bea)
    fits = {"action": "skip", "output": {"data": {"amount": 5}}}
    assert bea_client.post(url, fits, format="json").status_code == 403
    ana_client = APIClient()
    ana_client.force_authenticate(analyst)
    for bad in ({"amount": "lots"}, {}, None):
        output = {} if bad is None else {"data": bad}
        refused = ana_client.post(url, {"action": "skip", "output": output}, format="json")
        assert refused.status_code == 400, refused.json()
        assert refused.json()["fields"]["output"]
    incident.refresh_from_db()
    assert incident.resolved_at is None
    assert ana_client.post(url, fits, format="json").status_code == 200
    assert drive(run).output == {"big": False}
    # Bea may still retry or abort what she may operate.
    assert bea_client.post(url, {"action": "retry"}, format="json").status_code == 409  # already resolved


def test_restart_asks_before_sending_again_what_already_reached_outside(api, analyst, workflow):
    from apps.runs.models import EffectRecord

    run = drive(run_start(actor=analyst, workflow=workflow, inputs={"n": 1})[0])
    # Step c reached an outside system in the original run (the ledger row its effect left).
    EffectRecord.objects.create(run=run, step_key="c", idempotency_key="k" * 64, state="applied", attempts=1)
    refused = api.post(f"/api/runs/{run.pk}/restart/", {"step_key": "b"}, format="json")
    assert refused.status_code == 409 and refused.json()["send_again"] == ["c"]
    assert not Run.objects.filter(restarted_from=run).exists()
    # Confirmed, it goes ahead, and the audit trail says what was sent again.
    confirmed = api.post(f"/api/runs/{run.pk}/restart/", {"step_key": "b", "send_again": True}, format="json")
    assert confirmed.status_code == 201
    event = AuditEvent.objects.get(verb="run.restarted", target_id=str(confirmed.json()["id"]))
    assert event.data_dict["sent_again"] == ["c"]


def test_an_agent_s_tool_call_counts_as_its_agent_for_sending_again(api, analyst, workflow):
    """The ledger keeps a tool call under "<agent>~<n>"; a restart executes or reuses the agent, so that is the
    step it names, and a restart after it asks nothing."""
    from apps.runs.models import EffectRecord

    run = drive(run_start(actor=analyst, workflow=workflow, inputs={"n": 1})[0])
    EffectRecord.objects.create(run=run, step_key="b~1", idempotency_key="k" * 64, state="applied", attempts=1)
    refused = api.post(f"/api/runs/{run.pk}/restart/", {"step_key": "b"}, format="json")
    assert refused.status_code == 409 and refused.json()["send_again"] == ["b"]
    assert api.post(f"/api/runs/{run.pk}/restart/", {"step_key": "c"}, format="json").status_code == 201


def test_the_run_page_asks_to_send_again_only_on_steps_whose_restart_would(client, analyst, workflow):
    """Step b reached an outside system: restarting from a or b executes it again, from c does not (it is before c),
    so only a's and b's restart forms carry the confirmation, naming b."""
    import re

    from apps.runs.models import EffectRecord

    run = drive(run_start(actor=analyst, workflow=workflow, inputs={"n": 1})[0])
    EffectRecord.objects.create(run=run, step_key="b", idempotency_key="k" * 64, state="applied", attempts=1)
    client.force_login(analyst)
    page = client.get(f"/runs/{run.pk}/").content.decode()
    articles = dict(re.findall(r'<article[^>]*id="step-(\w+)"(.*?)</article>', page, flags=re.S))
    assert set(articles) == {"a", "b", "c"}
    asks = {key: 'name="send_again"' in html for key, html in articles.items()}
    assert asks == {"a": True, "b": True, "c": False}
    assert "Send again what “b” already sent to outside systems" in articles["a"]


def test_page_refusals_for_rights_answer_403(client, analyst, team, workflow):
    """An operator who may not change the workflow tries other settings from the run page: 403, as the API says,
    not a redirect with a message (review L3)."""
    from apps.accounts.services import user_create

    bea = user_create(username="bea", password="correct-horse-battery-staple", roles=["analyst"])
    bea.groups.add(team.group)
    run = drive(run_start(actor=analyst, workflow=workflow, inputs={"n": 1})[0])
    client.force_login(bea)
    response = client.post(f"/runs/{run.pk}/what-if/", {"step_key": "b", "prompt": "Other words"})
    assert response.status_code == 403
    assert not Run.objects.filter(restarted_from=run).exists()
