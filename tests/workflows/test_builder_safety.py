"""What the builder must never do: run a draft outside a test, rewrite what its forms cannot show, lose a
colleague's draft, grant a team through a file, or leave references and test data pointing at nothing."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from django.test import Client
from rest_framework.test import APIClient

from apps.core.exceptions import ApplicationError, Conflict, Forbidden
from apps.runs.draft_tests import run_test_start
from apps.runs.lifecycle import run_create
from apps.runs.models import Run
from apps.runs.services import run_replay, run_restart
from apps.workflows import blocks
from apps.workflows.editor import draft_edit
from apps.workflows.exchange import ImportProblems, document_build, document_dump, workflow_import
from apps.workflows.graph import graph_errors
from apps.workflows.models import PinnedOutput, WorkflowVersion
from apps.workflows.selectors import workflow_version_list
from apps.workflows.services import (
    DraftConflict,
    pinned_output_set,
    workflow_create,
    workflow_draft_get_or_create,
    workflow_draft_save,
    workflow_version_publish,
)
from tests.support.engine import drive

pytestmark = pytest.mark.django_db

GRAPH = {
    "steps": [
        {"key": "score", "type": "data.transform", "config": {"fields": {"risk": "input.amount / 100.0"}}},
        {"key": "post", "type": "http.request", "config": {"url": "http://127.0.0.1:9/x", "body": "{}"}},
    ]
}
SCHEMA = {"type": "object", "properties": {"amount": {"type": "number"}}, "required": ["amount"]}


@pytest.fixture
def drafted(analyst, team):
    workflow = workflow_create(actor=analyst, name="Safety", team=team)
    workflow_draft_save(actor=analyst, workflow=workflow, graph=GRAPH, input_schema=SCHEMA, expected_revision=None)
    return workflow


def test_a_test_run_is_never_replayed_restarted_or_re_run_live(analyst, drafted):
    run = drive(run_test_start(actor=analyst, workflow=drafted, inputs={"amount": 1.0}))
    assert run.status == "succeeded"
    with pytest.raises(Conflict, match="test run is not replayed"):
        run_replay(run=run, actor=analyst)
    with pytest.raises(Conflict, match="test run is not restarted"):
        run_restart(run=run, step_key="post", actor=analyst)
    draft = drafted.versions.get(state="draft")
    with pytest.raises(ApplicationError, match="only a test run may execute a draft"):
        run_create(version=draft, inputs={}, actor=analyst, trigger="manual")
    page = Client()
    page.force_login(analyst)
    html = page.get(f"/runs/{run.pk}/").content.decode()
    assert "Replay from recordings" not in html and "Restart from this step" not in html
    assert Run.objects.count() == 1


def test_the_field_table_never_rewrites_a_schema_it_cannot_show(analyst, drafted):
    rich = {
        "type": "object",
        "properties": {
            "address": {"type": "object", "properties": {"city": {"type": "string"}}},
            "when": {"type": "string", "format": "date"},
            "nullable": {"type": ["string", "null"]},
        },
        "required": ["address"],
    }
    graph = {"steps": [{"key": "extract", "type": "llm.extract", "config": {"prompt": "Go", "json_schema": rich}}]}
    workflow_draft_save(actor=analyst, workflow=drafted, graph=graph, input_schema=SCHEMA, expected_revision=None)
    client = Client()
    client.force_login(analyst)
    page = client.get(f"/workflows/{drafted.slug}/edit/?step=extract")
    assert page.status_code == 200
    assert "edited as JSON Schema here" in page.content.decode()
    revision = drafted.versions.get(state="draft").revision
    client.post(
        f"/workflows/{drafted.slug}/edit/steps/extract/",
        {"revision": revision, "name": "Renamed", "config.prompt": "Go", "config.json_schema": json.dumps(rich)},
    )
    step = drafted.versions.get(state="draft").graph["steps"][0]
    assert step["name"] == "Renamed" and step["config"]["json_schema"] == rich


def test_revisions_rise_across_drafts_so_a_stale_editor_never_overwrites_the_next_one(analyst, drafted):
    first = drafted.versions.get(state="draft")
    stale = first.revision
    workflow_draft_save(actor=analyst, workflow=drafted, graph=GRAPH, input_schema=SCHEMA, expected_revision=stale)
    workflow_version_publish(actor=analyst, version=drafted.versions.get(state="draft"))
    with pytest.raises(DraftConflict, match="has been published as version 1"):
        workflow_draft_save(
            actor=analyst, workflow=drafted, graph={"steps": []}, input_schema={}, expected_revision=stale + 1
        )
    second = workflow_draft_get_or_create(actor=analyst, workflow=drafted)
    assert second.revision > stale + 1
    with pytest.raises(DraftConflict):
        workflow_draft_save(
            actor=analyst, workflow=drafted, graph={"steps": []}, input_schema={}, expected_revision=stale + 1
        )


def test_publishing_needs_the_right_to_change_the_workflow(reviewer, drafted):
    with pytest.raises(Forbidden):
        workflow_version_publish(actor=reviewer, version=drafted.versions.get(state="draft"))


def test_a_file_never_grants_a_team_its_importer_is_not_on(analyst, outsider, drafted):
    from apps.accounts.services import team_create, user_create

    team_create(name="Finance", members=[outsider])
    published = workflow_version_publish(actor=analyst, version=drafted.versions.get(state="draft"))
    document = document_build(drafted, published)
    document.pop("version")
    document["metadata"].update(slug="other", name="Other", team="finance")
    with pytest.raises(ImportProblems) as refusal:
        workflow_import(actor=analyst, text=document_dump(document))
    assert "not on the team" in refusal.value.problems[0]["message"]
    admin = user_create(username="root-admin", password="x" * 12, roles=["admin", "analyst"])
    assert workflow_import(actor=admin, text=document_dump(document)).workflow.team.slug == "finance"


def test_new_workflow_from_a_file_never_replaces_an_existing_draft(analyst, drafted):
    published = workflow_version_publish(actor=analyst, version=drafted.versions.get(state="draft"))
    document = document_build(drafted, published)
    document.pop("version")
    from django.core.files.uploadedfile import SimpleUploadedFile

    client = Client()
    client.force_login(analyst)
    upload = SimpleUploadedFile("s.aios.yaml", document_dump(document).encode())
    response = client.post("/workflows/new/", {"file": upload, "name": ""})
    assert response.status_code == 400 and "exists already" in response.content.decode()
    assert not drafted.versions.filter(state="draft").exists()


def test_the_run_form_designer_keeps_what_it_does_not_show_and_what_is_typed_wrong(analyst, drafted):
    schema = {
        "type": "object",
        "properties": {"claim": {"type": "string", "minLength": 20, "pattern": "^C"}},
        "required": ["claim"],
        "examples": [{"label": "One", "claim": "C123456789012345678901"}],
    }
    workflow_draft_save(actor=analyst, workflow=drafted, graph=GRAPH, input_schema=schema, expected_revision=None)
    client = Client()
    client.force_login(analyst)
    url = f"/workflows/{drafted.slug}/edit/run-form/"
    body = {
        "revision": drafted.versions.get(state="draft").revision,
        "action": "fields",
        "rows": "2",
        "row.0.name": "claim_text",
        "row.0.original": "claim",
        "row.0.kind": "long_text",
        "row.0.required": "on",
        "row.1.name": "amount",
        "row.1.kind": "number",
        "row.1.default": "lots",
    }
    assert client.post(url, body).status_code == 400  # saved, with the wrong default marked
    saved = drafted.versions.get(state="draft").input_schema
    assert saved["properties"]["claim_text"]["minLength"] == 20 and saved["properties"]["claim_text"]["pattern"] == "^C"
    assert saved["properties"]["amount"]["default"] == "lots"
    assert saved["examples"] == [{"label": "One", "claim_text": "C123456789012345678901"}]
    assert any("default 'lots' is not a number" in problem for problem in _problems(drafted))


def _problems(workflow):
    from apps.workflows.services import version_problems

    return version_problems(workflow.versions.get(state="draft"))


def test_renames_and_deletes_carry_the_output_and_the_pins_with_them(analyst, drafted):
    graph = {**GRAPH, "output": "score"}
    workflow_draft_save(actor=analyst, workflow=drafted, graph=graph, input_schema=SCHEMA, expected_revision=None)
    pinned_output_set(actor=analyst, workflow=drafted, step_key="score", output={"risk": 3})
    draft_edit(
        actor=analyst,
        workflow=drafted,
        operation="rekey",
        data={"key": "score", "new_key": "risk"},
        expected_revision=None,
    )
    assert drafted.versions.get(state="draft").graph["output"] == "risk"
    assert list(PinnedOutput.objects.values_list("step_key", flat=True)) == ["risk"]
    draft_edit(actor=analyst, workflow=drafted, operation="delete", data={"key": "risk"}, expected_revision=None)
    assert "output" not in drafted.versions.get(state="draft").graph
    assert not PinnedOutput.objects.exists()
    draft_edit(
        actor=analyst,
        workflow=drafted,
        operation="insert",
        data={"type": "data.transform", "lane": "root", "index": 0},
        expected_revision=None,
    )
    assert not PinnedOutput.objects.exists()  # the new step does not inherit anything
    assert graph_errors({**GRAPH, "output": "nowhere"}) == ['graph: output names step "nowhere", which does not exist']
    assert blocks.tree_from_graph(drafted.versions.get(state="draft").graph)


def test_versions_count_live_runs_not_tests(analyst, drafted):
    drive(run_test_start(actor=analyst, workflow=drafted, inputs={"amount": 1.0}))
    workflow_version_publish(actor=analyst, version=drafted.versions.get(state="draft"))
    assert [v.run_count for v in workflow_version_list(drafted)] == [0]


def test_a_file_nested_too_deeply_is_refused_not_a_server_error(analyst):
    deep = "{" + '"a":{' * 5000 + "}" * 5001
    with pytest.raises(ImportProblems):
        workflow_import(actor=analyst, text=deep)


def test_test_runs_and_pins_over_the_api(analyst, reviewer, outsider, drafted):
    api = APIClient()
    api.force_login(analyst)
    response = api.post(f"/api/workflows/{drafted.slug}/draft/tests/", {"inputs": {"amount": 2.0}}, format="json")
    assert response.status_code == 201 and response.json()["mode"] == "test"
    refused = api.post(
        f"/api/workflows/{drafted.slug}/draft/tests/", {"step": "post", "inputs": {"amount": 2.0}}, format="json"
    )
    assert refused.status_code == 400 and "reads the output of" in refused.json()["detail"]
    pinned = api.put(f"/api/workflows/{drafted.slug}/draft/pinned/score/", {"output": {"risk": 5}}, format="json")
    assert pinned.status_code == 200 and pinned.json()["pinned_by"] == "ana"
    assert api.get(f"/api/workflows/{drafted.slug}/draft/pinned/").json()["results"][0]["step_key"] == "score"
    assert (
        api.post(
            f"/api/workflows/{drafted.slug}/draft/tests/", {"step": "post", "inputs": {"amount": 2.0}}, format="json"
        ).status_code
        == 201
    )
    for persona, expected in ((reviewer, 403), (outsider, 404)):
        other = APIClient()
        other.force_login(persona)
        assert other.get(f"/api/workflows/{drafted.slug}/draft/pinned/").status_code == expected
        assert (
            other.put(f"/api/workflows/{drafted.slug}/draft/pinned/score/", {"output": {}}, format="json").status_code
            == expected
        )
        assert other.post(f"/api/workflows/{drafted.slug}/draft/tests/", {}, format="json").status_code == expected
        page = Client()
        page.force_login(persona)
        assert page.post(f"/runs/test/{drafted.slug}/", {"source": ""}).status_code == expected
        assert page.post(f"/workflows/{drafted.slug}/edit/steps/score/pin/", {"output": "{}"}).status_code == expected
    assert PinnedOutput.objects.get().output == {"risk": 5}
    assert api.delete(f"/api/workflows/{drafted.slug}/draft/pinned/score/").status_code == 204
    assert Run.objects.filter(mode="test").count() == 2
    assert not WorkflowVersion.objects.filter(state="published").exists()
    assert Decimal("0") == drafted.baseline_minutes_per_case
