"""The exchange format: export and import of workflow files, their refusals with line numbers, dry runs,
permissions, the JSON Schema for editors, the management commands and the REST endpoints."""

from __future__ import annotations

import io
import json
from decimal import Decimal

import pytest
import yaml
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from jsonschema import Draft202012Validator
from rest_framework.test import APIClient

from apps.accounts.services import team_create
from apps.audit.models import AuditEvent
from apps.core.exceptions import Forbidden
from apps.inference.models import ModelEndpoint
from apps.workflows.exchange import (
    MAX_DOCUMENT_BYTES,
    ExportNotFound,
    ImportProblems,
    document_dump,
    document_parse,
    document_schema,
    requires_missing,
    workflow_export,
    workflow_import,
)
from apps.workflows.graph import graph_checksum
from apps.workflows.models import Workflow, WorkflowVersion
from apps.workflows.services import workflow_create, workflow_draft_save, workflow_version_publish

MIXED_INPUT_SCHEMA = {
    "type": "object",
    "properties": {
        "amount": {"type": "number", "title": "Amount"},
        "text": {"type": "string", "title": "Claim text", "format": "textarea", "minLength": 5},
    },
    "required": ["amount", "text"],
}

# if, switch, parallel, an error edge, a human approval, a run budget, an output step and a run timeout.
MIXED_GRAPH = {
    "steps": [
        {
            "key": "summarise",
            "type": "llm.generate",
            "name": "Summarise",
            "config": {
                "prompt": "Summarise this claim in one sentence:\n\n{{ input.text }}",
                "model": "small-model",
                "fallbacks": ["large-model"],
                "max_new_tokens": 120,
            },
            "retry": {"max_attempts": 3, "backoff_seconds": 2.5},
            "timeout_seconds": 30,
        },
        {"key": "recover", "type": "data.transform", "config": {"fields": {"summary": '"(no summary)"'}}},
        {"key": "big", "type": "logic.if", "name": "Large claim?", "config": {"condition": "input.amount > 1000.0"}},
        {
            "key": "route",
            "type": "logic.switch",
            "config": {"cases": [{"label": "urgent", "condition": "input.amount > 5000.0"}], "default": "normal"},
        },
        {
            "key": "approve",
            "type": "human.approval",
            "name": "Manager approval",
            "config": {"queue": "team:claims", "title": "Approve a large claim", "due_in_seconds": 86400},
            "inputs": {"amount": "input.amount", "note": {"template": "Claimed: {{ input.amount }} €"}},
        },
        {"key": "fan", "type": "flow.parallel", "config": {}},
        {"key": "notify", "type": "data.transform", "config": {"fields": {"channel": '"email"'}}},
        {"key": "record", "type": "data.transform", "config": {"fields": {"ledger": '"ok"'}}},
        {"key": "done", "type": "data.transform", "join": "any", "config": {"fields": {"status": '"done"'}}},
    ],
    "edges": [
        {"from": "summarise", "to": "big"},
        {"from": "summarise", "to": "recover", "when": "error"},
        {"from": "recover", "to": "big"},
        {"from": "big", "to": "route", "when": "true"},
        {"from": "big", "to": "fan", "when": "false"},
        {"from": "route", "to": "approve", "when": "urgent"},
        {"from": "route", "to": "fan", "when": "normal"},
        {"from": "approve", "to": "done", "when": "approved"},
        {"from": "fan", "to": "notify"},
        {"from": "fan", "to": "record"},
        {"from": "notify", "to": "done"},
        {"from": "record", "to": "done"},
    ],
    "budget": {"max_tokens": 20000, "max_cost": "0.50"},
    "output": "done",
    "timeout_seconds": 3600,
}

# A small valid file whose line numbers the refusal tests rely on (line 18: the second step's type,
# line 20: its prompt, line 21: its max_new_tokens).
LINED = """\
apiVersion: aios/v1
kind: Workflow
metadata:
  slug: line-check
  name: Line check
spec:
  input_schema:
    type: object
    properties:
      text: {type: string}
  graph:
    steps:
    - key: first
      type: data.transform
      config:
        fields: {a: '"x"'}
    - key: second
      type: llm.generate
      config:
        prompt: Hello {{ input.text }}
        max_new_tokens: 100
"""


@pytest.fixture
def endpoints(db):
    for name in ("small-model", "large-model"):
        ModelEndpoint.objects.create(name=name, url="http://127.0.0.1:9")


@pytest.fixture
def mixed_workflow(analyst, team, endpoints):
    """A published workflow using every kind of control flow, owned by Ana and shared with her team."""
    workflow = workflow_create(
        actor=analyst, name="Mixed routing", team=team, baseline_minutes_per_case=Decimal("12.50")
    )
    draft = workflow_draft_save(
        actor=analyst, workflow=workflow, graph=MIXED_GRAPH, input_schema=MIXED_INPUT_SCHEMA, expected_revision=None
    )
    workflow_version_publish(actor=analyst, version=draft, note="First cut: large claims need a manager.")
    return workflow


def _problems(text):
    with pytest.raises(ImportProblems) as refusal:
        document_parse(text)
    return refusal.value.problems


def _counts():
    return (
        Workflow.objects.count(),
        WorkflowVersion.objects.count(),
        AuditEvent.objects.exclude(verb__startswith="request.").count(),
    )


def _keys(value):
    """Every mapping key anywhere in `value`."""
    if isinstance(value, dict):
        return set(value).union(*(_keys(item) for item in value.values()))
    if isinstance(value, list):
        return set().union(*(_keys(item) for item in value))
    return set()


def _renamed(text, old_slug, new_slug):
    """The file as another instance would receive it: the same workflow under a slug free here."""
    assert text.count(f"slug: {old_slug}\n") == 1
    return text.replace(f"slug: {old_slug}\n", f"slug: {new_slug}\n")


# --- round trips ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["claims_workflow", "mixed_workflow"])
def test_promotion_round_trip_is_byte_identical_and_keeps_the_checksum(fixture, analyst, request):
    source = request.getfixturevalue(fixture)
    published = source.versions.get(state=WorkflowVersion.State.PUBLISHED)
    exported = workflow_export(actor=analyst, workflow=source)
    assert document_dump(document_parse(exported)) == exported

    # Another instance: the slug is free there, so the import creates the workflow with the file as its draft.
    incoming = _renamed(exported, source.slug, f"{source.slug}-promoted")
    result = workflow_import(actor=analyst, text=incoming)
    assert result.created and result.workflow is not None and result.draft is not None
    assert result.checksum == published.checksum
    assert not result.missing
    promoted = result.workflow
    assert (promoted.slug, promoted.name, promoted.team, promoted.baseline_minutes_per_case) == (
        f"{source.slug}-promoted",
        source.name,
        source.team,
        source.baseline_minutes_per_case,
    )
    assert promoted.owner == analyst

    version = workflow_version_publish(actor=analyst, version=result.draft, note=published.note)
    assert version.checksum == published.checksum
    assert workflow_export(actor=analyst, workflow=promoted) == incoming


def test_draft_export_reimported_into_its_workflow_is_byte_identical(claims_workflow, analyst):
    published = claims_workflow.versions.get()
    first = workflow_export(actor=analyst, workflow=claims_workflow)
    assert "\nversion:\n" in first  # no draft yet: the newest published version, with its version block

    result = workflow_import(actor=analyst, text=first)
    assert not result.created and result.workflow == claims_workflow and result.diff.is_empty
    draft_text = workflow_export(actor=analyst, workflow=claims_workflow)
    assert "\nversion:\n" not in draft_text  # a draft has no version block
    workflow_import(actor=analyst, text=draft_text)
    assert workflow_export(actor=analyst, workflow=claims_workflow) == draft_text
    assert graph_checksum(result.draft.graph, result.draft.input_schema) == published.checksum


def test_export_is_canonical_and_holds_semantics_only(mixed_workflow, analyst):
    text = workflow_export(actor=analyst, workflow=mixed_workflow)
    document = yaml.safe_load(text)
    assert list(document) == ["apiVersion", "kind", "metadata", "version", "spec", "requires"]
    assert document["metadata"] == {
        "slug": "mixed-routing",
        "name": "Mixed routing",
        "description": "",
        "team": "claims",
        "baseline_minutes_per_case": 12.5,
    }
    assert document["version"]["number"] == 1 and document["version"]["note"].startswith("First cut")
    assert list(document["spec"]["graph"]) == ["steps", "edges", "budget", "output", "timeout_seconds"]
    assert list(document["spec"]["graph"]["steps"][0]) == ["key", "type", "name", "config", "retry", "timeout_seconds"]
    assert document["requires"] == {
        "step_types": [
            "data.transform",
            "flow.parallel",
            "human.approval",
            "llm.generate",
            "logic.if",
            "logic.switch",
        ],
        "model_endpoints": ["large-model", "small-model"],
        "queues": ["team:claims"],
        "workflows": [],
    }
    assert not _keys(document) & {"id", "pk", "owner", "created_at", "published_at", "revision", "undo", "position"}
    audit = AuditEvent.objects.filter(verb="workflow.exported").get()
    assert json.loads(audit.data)["checksum"] == document["version"]["checksum"]


def test_export_picks_the_draft_then_the_newest_published_and_refuses_unknown_versions(claims_workflow, analyst):
    workflow_draft_save(
        actor=analyst,
        workflow=claims_workflow,
        graph={"steps": [{"key": "only", "type": "data.transform", "config": {"fields": {"a": "1"}}}]},
        input_schema={"type": "object", "properties": {}},
        expected_revision=None,
    )
    assert "key: only" in workflow_export(actor=analyst, workflow=claims_workflow)
    assert "key: only" not in workflow_export(actor=analyst, workflow=claims_workflow, version_number=1)
    with pytest.raises(ExportNotFound):
        workflow_export(actor=analyst, workflow=claims_workflow, version_number=2)  # the draft's number


# --- refusals, with their lines ---------------------------------------------------------------------------


def test_a_valid_file_parses():
    document = document_parse(LINED)
    assert document["spec"]["graph"]["steps"][1]["config"]["max_new_tokens"] == 100


def test_invalid_yaml_is_refused_at_its_line():
    text = LINED.replace("prompt: Hello {{ input.text }}", "prompt: Hello: there: {{ input.text }}")
    [problem] = _problems(text)
    assert problem["line"] == 20 and "not valid YAML" in problem["message"]


def test_unknown_step_type_is_refused_at_its_line():
    [problem] = _problems(LINED.replace("type: llm.generate", "type: llm.telepathy"))
    assert (problem["line"], problem["path"]) == (18, "spec.graph.steps.1.type")
    assert problem["message"].startswith('Unknown step type "llm.telepathy" (known: ')


def test_wrong_config_field_type_is_refused_at_its_line():
    [problem] = _problems(LINED.replace("max_new_tokens: 100", "max_new_tokens: lots"))
    assert (problem["line"], problem["path"]) == (21, "spec.graph.steps.1.config.max_new_tokens")
    assert "not of type 'integer'" in problem["message"]


def test_unknown_config_field_and_graph_problems_point_at_their_lines():
    text = LINED.replace("max_new_tokens: 100", "max_tokens: 100")
    [problem] = _problems(text)
    assert (problem["line"], problem["path"]) == (21, "spec.graph.steps.1.config.max_tokens")
    # graph_errors (an expression that does not parse) is placed at the config field it names.
    [problem] = _problems(LINED.replace("""{a: '"x"'}""", "{a: '1 +'}"))
    assert (problem["line"], problem["path"]) == (16, "spec.graph.steps.0.config.fields.a")
    assert "does not parse" in problem["message"]


def test_wrong_api_version_says_which_are_supported():
    [problem] = _problems(LINED.replace("apiVersion: aios/v1", "apiVersion: aios/v9"))
    assert (problem["line"], problem["path"]) == (1, "apiVersion")
    assert "aios/v9" in problem["message"] and "aios/v1" in problem["message"]
    [problem] = _problems(LINED.replace("kind: Workflow", "kind: Pipeline"))
    assert (problem["line"], problem["path"]) == (2, "kind")


def test_python_tags_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    text = LINED.replace("text: {type: string}", f"text: !!python/object/apply:os.system ['touch {marker}']")
    [problem] = _problems(text)
    assert problem["line"] == 10 and "python/object" in problem["message"]
    assert not marker.exists()


def test_aliases_duplicate_keys_and_dates_are_refused():
    aliased = LINED.replace("text: {type: string}", "text: &t {type: string}\n      other: *t")
    [problem] = _problems(aliased)
    assert problem["line"] == 11 and "aliases" in problem["message"]
    [problem] = _problems(LINED.replace("  name: Line check\n", "  name: Line check\n  name: Again\n"))
    assert (problem["line"], problem["path"]) == (6, "metadata.name")
    [problem] = _problems(LINED.replace("""{a: '"x"'}""", "{a: 2024-01-01}"))
    assert (problem["line"], problem["path"]) == (16, "spec.graph.steps.0.config.fields.a")


def test_a_too_large_file_is_refused_before_parsing():
    [problem] = _problems(LINED + "# " + "x" * MAX_DOCUMENT_BYTES + "\n")
    assert problem["line"] is None and "larger than 1 MB" in problem["message"]


def test_an_edited_export_must_drop_its_version_block(claims_workflow, analyst):
    text = workflow_export(actor=analyst, workflow=claims_workflow).replace("Extract claim fields", "Extract fields")
    [problem] = _problems(text)
    assert problem["path"] == "version.checksum" and "Remove the version block" in problem["message"]
    edited = yaml.safe_load(text)
    del edited["version"]
    assert document_parse(document_dump(edited))["spec"]["graph"]["steps"][0]["name"] == "Extract fields"


def test_json_is_accepted_even_with_tabs():
    document = yaml.safe_load(LINED)
    assert document_parse(json.dumps(document, indent="\t")) == document


def test_unmet_requirements_are_reported_not_refused(analyst, team):
    text = LINED.replace("max_new_tokens: 100", "max_new_tokens: 100\n        model: nowhere-model") + (
        "    - key: third\n"
        "      type: human.approval\n"
        "      config: {queue: no-such-group}\n"
        "    - key: fourth\n"
        "      type: flow.subworkflow\n"
        "      config: {workflow: not-here}\n"
    )
    document = document_parse(text)
    assert requires_missing(document) == {
        "model_endpoints": ["nowhere-model"],
        "queues": ["no-such-group"],
        "workflows": ["not-here"],
    }
    result = workflow_import(actor=analyst, text=text)
    assert result.created and result.missing == requires_missing(document)
    bad = yaml.safe_load(text)
    bad["requires"] = {"step_types": ["data.transform", "quantum.step"]}
    with pytest.raises(ImportProblems) as refusal:
        document_parse(document_dump(bad))
    assert [p["path"] for p in refusal.value.problems] == ["requires.step_types.1"]


# --- dry runs and drafts ----------------------------------------------------------------------------------


def test_dry_run_changes_nothing_and_returns_the_diff(claims_workflow, analyst, team):
    text = workflow_export(actor=analyst, workflow=claims_workflow)
    edited = yaml.safe_load(text)
    del edited["version"]
    edited["spec"]["graph"]["steps"][1]["name"] = "Choose the route"
    before = _counts()

    result = workflow_import(actor=analyst, text=document_dump(edited), dry_run=True)
    assert _counts() == before
    assert result.workflow == claims_workflow and not result.created and result.draft is None
    assert result.diff.summary() == "1 step changed" and result.diff_base == "version 1 (published)"

    new = workflow_import(actor=analyst, text=_renamed(text, "claims-triage", "claims-copy"), dry_run=True)
    assert _counts() == before
    assert new.workflow is None and new.created and new.diff.summary().startswith("2 steps added")


def test_import_into_an_existing_workflow_only_writes_its_draft(claims_workflow, analyst):
    published = claims_workflow.versions.get()
    frozen = (published.graph, published.input_schema, published.checksum)
    edited = yaml.safe_load(workflow_export(actor=analyst, workflow=claims_workflow))
    del edited["version"]
    edited["metadata"]["name"] = "Renamed in the file"
    edited["spec"]["graph"]["steps"][0]["config"]["max_new_tokens"] = 400

    first = workflow_import(actor=analyst, text=document_dump(edited))
    assert first.draft is not None and first.draft.number == 2 and not first.draft.is_published
    assert first.draft.graph["steps"][0]["config"]["max_new_tokens"] == 400
    edited["spec"]["graph"]["steps"][0]["config"]["max_new_tokens"] = 500
    second = workflow_import(actor=analyst, text=document_dump(edited))
    assert second.draft is not None and second.draft.pk == first.draft.pk
    assert second.draft.revision == first.draft.revision + 1 and second.diff_base == "version 2 (the draft)"

    published.refresh_from_db()
    claims_workflow.refresh_from_db()
    assert (published.graph, published.input_schema, published.checksum) == frozen and published.is_published
    assert claims_workflow.versions.count() == 2 and claims_workflow.name == "Claims triage"
    audit = json.loads(AuditEvent.objects.filter(verb="workflow.imported").latest("id").data)
    assert audit["checksum"] == second.checksum and audit["created"] is False


def test_importing_a_new_workflow_with_an_unknown_team_is_refused(analyst):
    text = LINED.replace("  name: Line check\n", "  name: Line check\n  team: nobody\n")
    with pytest.raises(ImportProblems) as refusal:
        workflow_import(actor=analyst, text=text)
    assert [(p["line"], p["path"]) for p in refusal.value.problems] == [(6, "metadata.team")]
    assert not Workflow.objects.exists()
    result = workflow_import(actor=analyst, text=text, team=team_create(name="Ops", members=[]))
    assert result.workflow is not None and result.workflow.team.slug == "ops"


def test_a_user_who_may_not_edit_is_refused(claims_workflow, analyst, reviewer, outsider):
    text = workflow_export(actor=analyst, workflow=claims_workflow)
    before = _counts()
    for persona in (reviewer, outsider):  # one may view it, the other may not even know it exists
        with pytest.raises(ImportProblems) as refusal:
            workflow_import(actor=persona, text=text)
        [problem] = refusal.value.problems
        assert problem["message"] == 'A workflow with the slug "claims-triage" exists and you may not change it.'
    with pytest.raises(Forbidden):
        workflow_import(actor=reviewer, text=text, workflow=claims_workflow, dry_run=True)
    with pytest.raises(Forbidden):
        workflow_import(actor=outsider, text=_renamed(text, "claims-triage", "otto-s-copy"))
    assert _counts() == before


def test_the_schema_validates_a_real_export(mixed_workflow, claims_workflow, analyst):
    schema = document_schema()
    Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schema)
    for workflow in (mixed_workflow, claims_workflow):
        validator.validate(yaml.safe_load(workflow_export(actor=analyst, workflow=workflow)))
    rules = schema["$defs"]["step"]["allOf"]
    assert {
        "if": {"properties": {"type": {"const": "human.approval"}}, "required": ["type"]},
        "then": {"properties": {"config": {"$ref": "#/$defs/config.human.approval"}}},
    } in rules
    assert schema["$defs"]["config.llm.generate"]["properties"]["routing"]["anyOf"][0]["$ref"] == (
        "#/$defs/config.llm.generate.Routing"
    )


# --- management commands ----------------------------------------------------------------------------------


def test_export_command_prints_the_file(claims_workflow, analyst, outsider, tmp_path):
    out = io.StringIO()
    call_command("workflow_export", "claims-triage", "--version", "1", stdout=out)
    assert out.getvalue() == workflow_export(actor=analyst, workflow=claims_workflow, version_number=1)
    target = tmp_path / "claims.aios.yaml"
    call_command(
        "workflow_export", "claims-triage", "--output", str(target), stdout=io.StringIO(), stderr=io.StringIO()
    )
    assert target.read_text() == out.getvalue()
    with pytest.raises(CommandError, match="may not view"):
        call_command("workflow_export", "claims-triage", "--as", outsider.username)
    with pytest.raises(CommandError, match="no published version 7"):
        call_command("workflow_export", "claims-triage", "--version", "7")


def test_import_command_dry_run_prints_the_diff_and_requirements(claims_workflow, analyst, tmp_path):
    edited = yaml.safe_load(workflow_export(actor=analyst, workflow=claims_workflow))
    del edited["version"]
    edited["spec"]["graph"]["steps"][1]["name"] = "Choose the route"
    edited["spec"]["graph"]["steps"][0]["config"]["model"] = "nowhere-model"
    file = tmp_path / "claims.aios.yaml"
    file.write_text(document_dump(edited))
    before = _counts()

    out = io.StringIO()
    call_command("workflow_import", str(file), "--dry-run", "--as", "ana", stdout=out)
    printed = out.getvalue()
    assert _counts() == before
    assert "Dry run: nothing was changed." in printed
    assert "Changes against version 1 (published): 2 steps changed" in printed
    assert '~ step "decide" (Choose the route): name changed' in printed
    assert "model endpoints: nowhere-model" in printed

    out = io.StringIO()
    call_command("workflow_import", str(file), "--into", "claims-triage", "--as", "ana", stdout=out)
    assert 'Saved the file as the draft of "claims-triage" (draft version 2, revision 3)' in out.getvalue()


def test_import_command_lists_problems_and_fails(analyst, tmp_path):
    file = tmp_path / "bad.yaml"
    file.write_text(LINED.replace("type: llm.generate", "type: llm.telepathy"))
    err = io.StringIO()
    with pytest.raises(CommandError, match="cannot be imported: 1 problem") as failure:
        call_command("workflow_import", str(file), "--as", "ana", stdout=io.StringIO(), stderr=err)
    assert failure.value.returncode == 1
    assert err.getvalue().startswith('line 18: spec.graph.steps.1.type: Unknown step type "llm.telepathy"')
    assert not Workflow.objects.exists()


# --- the API ----------------------------------------------------------------------------------------------


@pytest.fixture
def api(analyst):
    client = APIClient()
    client.force_login(analyst)
    return client


def test_api_export_downloads_yaml_and_hides_from_outsiders(api, claims_workflow, analyst, outsider):
    response = api.get("/api/workflows/claims-triage/export/")
    assert response.status_code == 200 and response["Content-Type"] == "text/yaml; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="claims-triage.aios.yaml"'
    assert response.content.decode() == workflow_export(actor=analyst, workflow=claims_workflow)
    assert api.get("/api/workflows/claims-triage/export/?version=9").status_code == 404
    assert api.get("/api/workflows/claims-triage/export/?version=x").status_code == 400
    other = APIClient()
    other.force_login(outsider)
    assert other.get("/api/workflows/claims-triage/export/").status_code == 404


def test_api_import_creates_updates_dry_runs_and_refuses(api, claims_workflow, analyst):
    text = workflow_export(actor=analyst, workflow=claims_workflow)
    copy = _renamed(text, "claims-triage", "claims-copy")
    upload = SimpleUploadedFile("claims.aios.yaml", copy.encode(), content_type="application/yaml")
    created = api.post("/api/workflows/import/", {"file": upload}, format="multipart")
    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["workflow"] == "claims-copy" and body["created"] and body["draft_revision"] == 2
    assert body["diff"]["summary"].startswith("2 steps added") and body["missing"] == {}

    updated = api.post("/api/workflows/import/?into=claims-triage", text, content_type="application/yaml")
    assert updated.status_code == 200 and updated.json()["created"] is False
    assert updated.json()["diff"] == {"base": "version 1 (published)", "summary": "No changes", "text": "No changes"}

    before = _counts()
    dry = api.post(
        "/api/workflows/import/",
        {"document": _renamed(text, "claims-triage", "claims-dry"), "dry_run": True},
        format="json",
    )
    assert dry.status_code == 200 and dry.json()["workflow"] is None and dry.json()["created"] is True
    assert dry.json()["draft_revision"] is None and _counts() == before

    refused = api.post("/api/workflows/import/", {"document": LINED.replace("aios/v1", "aios/v2")}, format="json")
    assert refused.status_code == 400
    [problem] = refused.json()["problems"]
    assert (problem["line"], problem["path"]) == (1, "apiVersion") and "aios/v1" in problem["message"]
    assert refused.json()["detail"] == "The file cannot be imported: 1 problem."
    assert api.post("/api/workflows/import/", {}, format="json").status_code == 400


def test_api_serves_the_document_schema_to_signed_in_users(api):
    response = api.get("/api/schema/workflow/v1.json")
    assert response.status_code == 200 and response.json() == document_schema()
    assert APIClient().get("/api/schema/workflow/v1.json").status_code == 401
