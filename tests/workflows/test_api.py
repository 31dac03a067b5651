"""The workflow API mirrors the builder: workflows (list filters, create, settings, archive), the draft with
optimistic concurrency (409 naming who, 428 without a revision), outline edits, validation, publishing, versions
and their diff, by persona; and what the API changes, the builder page shows."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from apps.accounts.services import api_token_issue, team_create, user_create
from apps.audit.models import AuditEvent
from apps.workflows import blocks
from apps.workflows.models import Workflow, WorkflowVersion
from apps.workflows.services import (
    workflow_archive,
    workflow_create,
    workflow_draft_get_or_create,
    workflow_draft_save,
    workflow_version_publish,
)
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


@pytest.fixture
def blank(analyst, team):
    return workflow_create(actor=analyst, name="Invoice review", team=team)


def api(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def draft_of(workflow: Workflow) -> WorkflowVersion:
    return workflow.versions.get(state="draft")


def keys(workflow: Workflow) -> list[str]:
    return [step["key"] for step in draft_of(workflow).graph["steps"]]


def edit(client: APIClient, workflow: Workflow, **body):
    """One outline operation through the API, based on the draft's current revision."""
    body.setdefault("revision", draft_of(workflow).revision)
    return client.post(f"/api/workflows/{workflow.slug}/draft/edits/", body, format="json")


# --- workflows ---------------------------------------------------------------------------------------------------


def test_the_list_filters_as_the_list_page_does(analyst, team):
    bea = user_create(username="bea", password=PASSWORD, roles=["analyst"], first_name="Bea")
    shared = team_create(name="Billing", members=[analyst, bea])
    workflow_create(actor=analyst, name="Claims triage", team=team)
    workflow_create(actor=analyst, name="Invoice review", description="Supplier invoices")
    workflow_create(actor=bea, name="Dunning letters", team=shared)
    workflow_archive(actor=analyst, workflow=workflow_create(actor=analyst, name="Old intake"))
    client = api(analyst)

    def names(query: str = "") -> list[str]:
        response = client.get(f"/api/workflows/{query}")
        assert response.status_code == 200, response.json()
        return [item["name"] for item in response.json()["results"]]

    assert names() == ["Claims triage", "Dunning letters", "Invoice review"]
    assert names("?q=SUPPLIER") == ["Invoice review"]
    assert names("?team=billing") == ["Dunning letters"]
    assert names("?owner=me") == ["Claims triage", "Invoice review"]
    assert names("?state=archived") == ["Old intake"]
    assert names("?state=all&owner=me") == ["Claims triage", "Invoice review", "Old intake"]
    response = client.get("/api/workflows/?state=deleted")
    assert response.status_code == 400 and "state" in response.json()["fields"]


def test_create_then_change_the_settings(analyst, team, outsider):
    client = api(analyst)
    body = {"name": "Invoice review", "description": "Check invoices", "team": team.slug}
    response = client.post("/api/workflows/", {**body, "baseline_minutes_per_case": "12.5"}, format="json")
    assert response.status_code == 201, response.json()
    created = response.json()
    assert created["slug"] == "invoice-review" and created["owner"] == "ana" and created["team"] == team.slug
    assert created["baseline_minutes_per_case"] == "12.50" and created["published_version"] is None

    # Refusals say which field, in the services' words.
    response = client.post("/api/workflows/", body, format="json")
    assert response.status_code == 400 and response.json()["detail"] == "That name is taken."
    assert "name" in response.json()["fields"]
    elsewhere = team_create(name="Elsewhere", members=[outsider])
    response = client.post("/api/workflows/", {"name": "Other", "team": elsewhere.slug}, format="json")
    assert response.status_code == 400 and response.json()["fields"]["team"] == ["Choose one of your teams."]

    url = "/api/workflows/invoice-review/"
    response = client.patch(url, {"name": "Invoice checks", "baseline_minutes_per_case": "8"}, format="json")
    assert response.status_code == 200, response.json()
    assert response.json()["name"] == "Invoice checks" and response.json()["slug"] == "invoice-review"
    assert response.json()["team"] == team.slug  # not given, not changed
    assert client.patch(url, {"team": None}, format="json").json()["team"] is None
    response = client.patch(url, {"baseline_minutes_per_case": "-1"}, format="json")
    assert response.status_code == 400 and "baseline_minutes_per_case" in response.json()["fields"]
    assert client.put(url, {"name": "x"}, format="json").status_code == 405
    assert AuditEvent.objects.filter(verb="workflow.updated").count() == 2


@pytest.mark.parametrize("persona", ["reviewer", "manager", "outsider"])
def test_only_analysts_create(request, persona, team):
    response = api(request.getfixturevalue(persona)).post("/api/workflows/", {"name": "Mine"}, format="json")
    assert response.status_code == 403 and not Workflow.objects.filter(slug="mine").exists()


def test_archive_and_restore(analyst, claims_workflow):
    client = api(analyst)
    slug = claims_workflow.slug
    response = client.post(f"/api/workflows/{slug}/archive/")
    assert response.status_code == 200 and response.json()["archived_at"] is not None
    assert client.get("/api/workflows/").json()["count"] == 0
    assert client.get("/api/workflows/?state=archived").json()["count"] == 1
    assert client.get(f"/api/workflows/{slug}/").status_code == 200  # archived, not gone
    response = client.post(f"/api/workflows/{slug}/restore/")
    assert response.status_code == 200 and response.json()["archived_at"] is None


# --- who may write what ---------------------------------------------------------------------------------------

# The owner writes; her teammate and the manager see the workflow but may not change it (403); the outsider may
# not know it exists (404); an anonymous caller is refused (401, no session, no token).
WRITES_REFUSED = {"reviewer": 403, "manager": 403, "outsider": 404, "anonymous": 401}


@pytest.mark.parametrize("persona", sorted(WRITES_REFUSED))
def test_writes_by_persona_change_nothing(request, persona, analyst, claims_workflow):
    draft = workflow_draft_get_or_create(actor=analyst, workflow=claims_workflow)
    client = APIClient()
    if persona != "anonymous":
        client.force_login(request.getfixturevalue(persona))
    base = f"/api/workflows/{claims_workflow.slug}"
    revision = {"revision": draft.revision}
    writes = [
        ("patch", f"{base}/", {"name": "Renamed"}),
        ("post", f"{base}/archive/", {}),
        ("post", f"{base}/restore/", {}),
        ("get", f"{base}/draft/", None),
        ("put", f"{base}/draft/", {"graph": {"steps": []}, "input_schema": {}, **revision}),
        ("post", f"{base}/draft/edits/", {"operation": "delete", "key": "decide", **revision}),
        ("post", f"{base}/draft/edits/", {"operation": "undo", **revision}),
        ("post", f"{base}/draft/validate/", {}),
        ("post", f"{base}/draft/publish/", {"note": "x", **revision}),
        ("post", f"{base}/versions/1/restore/", {}),
    ]
    for method, url, body in writes:
        response = getattr(client, method)(url, body, format="json")
        assert response.status_code == WRITES_REFUSED[persona], f"{persona} {method.upper()} {url}"
        assert set(response.json()) == {"detail"}
    before = draft.revision
    draft.refresh_from_db()
    claims_workflow.refresh_from_db()
    assert draft.revision == before and draft.state == "draft"
    assert claims_workflow.name == "Claims triage" and claims_workflow.archived_at is None


def test_a_token_works_like_a_session(analyst, claims_workflow):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {api_token_issue(user=analyst, name='t', lifetime_days=7)[1]}")
    assert client.get(f"/api/workflows/{claims_workflow.slug}/draft/").status_code == 200


# --- the draft ---------------------------------------------------------------------------------------------------


def test_the_first_read_starts_the_draft_from_the_newest_version(analyst, claims_workflow):
    response = api(analyst).get(f"/api/workflows/{claims_workflow.slug}/draft/")
    assert response.status_code == 200
    draft = response.json()
    published = claims_workflow.versions.get(number=1)
    # Revisions keep rising across a workflow's drafts: version 1 ended at revision 1, so its successor starts at 2.
    assert draft["number"] == 2 and draft["revision"] == 2 and response["ETag"] == '"2"'
    assert draft["graph"] == published.graph and draft["input_schema"] == published.input_schema
    assert draft["updated_by"] == "ana" and draft["updated_at"]
    assert draft["problems"] == [] and draft["can_publish"] is True
    assert draft["undo_label"] is None and draft["read_only_reason"] == ""
    assert [(b["key"], b["lane"], b["index"], b["lanes"]) for b in draft["outline"]] == [
        ("extract", "root", 0, None),
        ("decide", "root", 1, None),
    ]
    assert draft["outline"][0]["error_mode"] == "fail" and draft["outline"][0]["name"] == "Extract claim fields"


def test_save_needs_a_revision_and_a_stale_one_names_who_changed_the_draft(analyst, blank):
    client = api(analyst)
    url = f"/api/workflows/{blank.slug}/draft/"
    loaded = client.get(url).json()["revision"]
    half_done = {"steps": [{"key": "wait", "type": "util.delay", "name": "Pause", "config": {}}]}
    body = {"graph": half_done, "input_schema": {"type": "object", "properties": {}}}

    response = client.put(url, body, format="json")
    assert response.status_code == 428 and "If-Match" in response.json()["detail"]
    assert draft_of(blank).revision == loaded

    # An invalid draft is saved, with its problems.
    response = client.put(url, {**body, "revision": loaded}, format="json")
    assert response.status_code == 200, response.json()
    saved = response.json()
    assert saved["revision"] == loaded + 1 and saved["graph"] == half_done and saved["can_publish"] is False
    assert {problem["step"] for problem in saved["problems"]} == {"wait"}
    assert saved["undo_label"] == "Save through the API"

    response = client.put(url, {**body, "graph": {"steps": []}, "revision": loaded}, format="json")
    assert response.status_code == 409
    conflict = response.json()
    assert "Ana Analyst changed this draft" in conflict["detail"]
    assert conflict["revision"] == loaded + 1 and conflict["updated_by"] == "ana" and conflict["updated_at"]
    assert keys(blank) == ["wait"]

    # If-Match instead of a body revision; "*" overwrites knowingly.
    response = client.put(url, body, format="json", HTTP_IF_MATCH=f'"{loaded + 1}"')
    assert response.status_code == 200 and response["ETag"] == f'"{loaded + 2}"'
    assert client.put(url, body, format="json", HTTP_IF_MATCH=f'"{loaded}"').status_code == 409
    assert client.put(url, body, format="json", HTTP_IF_MATCH="*").status_code == 200
    assert client.put(url, body, format="json", HTTP_IF_MATCH="soon").status_code == 400


def test_a_draft_that_is_not_a_graph_is_refused_with_field_errors(analyst, blank):
    client = api(analyst)
    url = f"/api/workflows/{blank.slug}/draft/"
    revision = client.get(url).json()["revision"]
    for graph in ("steps", {"edges": []}, {"steps": [1]}, {"steps": [{"key": "a", "config": []}]}):
        response = client.put(url, {"graph": graph, "input_schema": {}, "revision": revision}, format="json")
        assert response.status_code == 400, graph
        assert response.json()["detail"] and list(response.json()["fields"]) == ["graph"]
    response = client.put(url, {"graph": {"steps": []}, "input_schema": [], "revision": revision}, format="json")
    assert response.status_code == 400 and list(response.json()["fields"]) == ["input_schema"]
    assert draft_of(blank).revision == revision


def test_a_graph_the_outline_cannot_show_has_no_outline_and_says_why(analyst, blank):
    client = api(analyst)
    url = f"/api/workflows/{blank.slug}/draft/"
    step = {"type": "util.delay", "config": {"seconds": 1}}
    graph = {"steps": [{"key": "a", **step}, {"key": "b", **step}], "edges": []}
    revision = client.get(url).json()["revision"]
    response = client.put(url, {"graph": graph, "input_schema": {}, "revision": revision}, format="json")
    assert response.status_code == 200
    assert response.json()["outline"] is None and "several steps" in response.json()["read_only_reason"]
    response = edit(client, blank, operation="delete", key="a")
    assert response.status_code == 400 and "cannot be edited as an outline" in response.json()["detail"]


def test_outline_edits_mirror_the_builder_and_the_page_shows_them(analyst, blank):
    client = api(analyst)
    client.get(f"/api/workflows/{blank.slug}/draft/")
    edit(client, blank, operation="insert", type="llm.extract", lane="root", index=0)
    edit(client, blank, operation="insert", type="logic.if", lane="root", index=1)
    edit(client, blank, operation="insert", type="human.approval", lane="check/branch/true", index=0)
    response = edit(client, blank, operation="insert", type="data.transform", lane="check/branch/false", index=0)
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["message"] == 'Added "Transform data".' and body["focus"] == "transform"
    assert keys(blank) == ["extract", "check", "approval", "transform"]
    assert {"from": "check", "to": "approval", "when": "true"} in body["graph"]["edges"]
    check = body["outline"][1]
    assert [(lane["id"], [b["key"] for b in lane["blocks"]]) for lane in check["lanes"]] == [
        ("check/branch/true", ["approval"]),
        ("check/branch/false", ["transform"]),
    ]
    assert check["lanes"][1]["blocks"][0]["lane"] == "check/branch/false"

    # Down from the end of its lane, a step steps out of the lane (as the builder's button does); undo puts it back.
    response = edit(client, blank, operation="move", key="transform", direction="down")
    assert response.status_code == 200 and response.json()["message"] == 'Moved "Transform data" down.'
    assert [b["key"] for b in response.json()["outline"]] == ["extract", "check", "transform"]
    response = edit(client, blank, operation="undo")
    assert response.status_code == 200 and response.json()["message"].startswith("Undone.")
    tree = blocks.tree_from_graph(draft_of(blank).graph)
    assert [b.key for b in tree.blocks] == ["extract", "check"]
    assert [b.key for b in tree.blocks[1].lanes[1].blocks] == ["transform"]

    edit(client, blank, operation="error_mode", key="extract", mode="ignore")
    edit(client, blank, operation="rekey", key="transform", new_key="route")
    response = edit(client, blank, operation="configure", key="route", step={"name": "Route the claim"})
    assert response.status_code == 200 and response.json()["outline"][0]["error_mode"] == "ignore"

    # The builder page renders the same draft.
    page = api(analyst).get(f"/workflows/{blank.slug}/edit/").content.decode()
    for key in ("extract", "check", "approval", "route"):
        assert f'id="card-{key}"' in page
    assert "Route the claim" in page and "Undo" in page
    # And an edit on the page shows in the API.
    revision = draft_of(blank).revision
    client.post(
        f"/workflows/{blank.slug}/edit/operation/", {"revision": revision, "operation": "delete", "key": "approval"}
    )
    draft = client.get(f"/api/workflows/{blank.slug}/draft/").json()
    assert draft["revision"] == revision + 1 and "approval" not in [s["key"] for s in draft["graph"]["steps"]]


def test_refused_edits_change_nothing(analyst, blank):
    client = api(analyst)
    client.get(f"/api/workflows/{blank.slug}/draft/")
    response = edit(client, blank, operation="undo")
    assert response.status_code == 409 and response.json()["detail"] == "There is nothing to undo."
    edit(client, blank, operation="insert", type="logic.if", lane="root", index=0)
    before = draft_of(blank).revision

    response = edit(client, blank, operation="move_to", key="check", lane="check/branch/true")
    assert response.status_code == 400 and response.json()["detail"] == "A step cannot move into its own branches."
    response = edit(client, blank, operation="insert", type="no.such", lane="root", index=0)
    assert response.status_code == 400 and "type" in response.json()["fields"]
    response = edit(client, blank, operation="rotate", key="check")
    assert response.status_code == 400 and "operation" in response.json()["fields"]
    response = edit(client, blank, operation="delete", key="check", revision=before - 1)
    assert response.status_code == 409
    assert response.json()["revision"] == before and response.json()["updated_by"] == "ana"
    response = client.post(f"/api/workflows/{blank.slug}/draft/edits/", {"operation": "delete", "key": "check"})
    assert response.status_code == 428
    assert draft_of(blank).revision == before and keys(blank) == ["check"]


def test_validate_checks_the_draft_or_given_content_without_saving(analyst, blank):
    client = api(analyst)
    url = f"/api/workflows/{blank.slug}/draft/validate/"
    response = client.post(url, {}, format="json")
    assert response.status_code == 200
    assert response.json()["can_publish"] is False
    assert response.json()["problems"] == [
        {"step": None, "field": "", "message": "graph: a workflow needs at least one step"}
    ]
    graph = {"steps": [{"key": "wait", "type": "util.delay", "config": {"seconds": 5}}]}
    response = client.post(url, {"graph": graph}, format="json")
    assert response.json() == {"revision": 1, "problems": [], "can_publish": True}
    response = client.post(url, {"graph": graph, "input_schema": {"type": "array"}}, format="json")
    assert response.json()["can_publish"] is False and response.json()["problems"][0]["step"] is None
    assert client.post(url, {"graph": [1]}, format="json").status_code == 400
    assert draft_of(blank).revision == 1 and draft_of(blank).graph == {"steps": []}


def test_publish_is_refused_with_every_problem_then_succeeds_with_a_note(analyst, blank):
    client = api(analyst)
    url = f"/api/workflows/{blank.slug}/draft/publish/"
    client.get(f"/api/workflows/{blank.slug}/draft/")
    edit(client, blank, operation="insert", type="util.delay", lane="root", index=0)
    revision = draft_of(blank).revision
    response = client.post(url, {"note": "First", "revision": revision}, format="json")
    assert response.status_code == 400
    refusal = response.json()
    assert refusal["detail"] == "The version cannot be published."
    assert refusal["problems"] and all(set(p) == {"step", "field", "message"} for p in refusal["problems"])
    assert {p["step"] for p in refusal["problems"]} == {"wait"}

    edit(client, blank, operation="configure", key="wait", step={"config": {"seconds": 5}})
    assert client.post(url, {"note": "First", "revision": revision}, format="json").status_code == 409
    assert client.post(url, {"note": "First"}, format="json").status_code == 428
    response = client.post(url, {"note": "First version", "revision": revision + 1}, format="json")
    assert response.status_code == 201, response.json()
    version = response.json()
    assert version["number"] == 1 and version["state"] == "published" and version["note"] == "First version"
    assert version["published_by"] == "ana" and len(version["checksum"]) == 64 and version["run_count"] == 0
    assert version["graph"]["steps"][0]["config"] == {"seconds": 5}
    response = client.post(url, {"note": "Again", "revision": revision + 1}, format="json")
    assert response.status_code == 409 and response.json()["detail"] == "There is no draft to publish."
    # The builder's versions page lists what the API published.
    assert "First version" in client.get(f"/workflows/{blank.slug}/versions/").content.decode()


# --- versions ----------------------------------------------------------------------------------------------------


@pytest.fixture
def two_versions(analyst, claims_workflow):
    """Version 2 rewrites the extraction prompt and pauses at the end."""
    draft = workflow_draft_get_or_create(actor=analyst, workflow=claims_workflow)
    graph = draft.graph
    graph["steps"][0]["config"]["prompt"] = "A new prompt {{ input.claim_text }}"
    graph["steps"].append({"key": "notify", "type": "util.delay", "name": "Pause", "config": {"seconds": 1}})
    draft = workflow_draft_save(
        actor=analyst, workflow=claims_workflow, graph=graph, input_schema=draft.input_schema, expected_revision=None
    )
    workflow_version_publish(actor=analyst, version=draft, note="Pause at the end")
    return claims_workflow


def test_versions_list_and_detail(analyst, reviewer, two_versions):
    client = api(reviewer)  # whoever sees the workflow reads its versions
    base = f"/api/workflows/{two_versions.slug}/versions/"
    client.get(base)  # warm the per-process caches (content types, permissions)
    with CaptureQueriesContext(connection) as two:
        response = client.get(base)
    assert response.status_code == 200
    versions = response.json()["results"]
    assert [(v["number"], v["state"], v["note"], v["published_by"], v["run_count"]) for v in versions] == [
        (2, "published", "Pause at the end", "ana", 0),
        (1, "published", "", "ana", 0),
    ]
    workflow_draft_get_or_create(actor=analyst, workflow=two_versions)
    with CaptureQueriesContext(connection) as three:
        assert len(client.get(base).json()["results"]) == 3
    assert len(three) == len(two), [q["sql"][:120] for q in three.captured_queries]
    detail = client.get(f"{base}1/").json()
    assert detail["number"] == 1 and [s["key"] for s in detail["graph"]["steps"]] == ["extract", "decide"]
    assert detail["input_schema"]["required"] == ["claim_text"]
    assert client.get(f"{base}9/").status_code == 404


def test_the_diff_between_two_versions(reviewer, two_versions):
    client = api(reviewer)
    url = f"/api/workflows/{two_versions.slug}/versions/diff/"
    response = client.get(f"{url}?from=1&to=2")
    assert response.status_code == 200
    diff = response.json()
    assert diff["from"] == 1 and diff["to"] == 2 and diff["summary"] == "1 step added, 1 changed"
    extract, notify = diff["steps"]
    assert (extract["key"], extract["kind"], extract["moved"]) == ("extract", "changed", False)
    assert [(f["path"], f["kind"]) for f in extract["fields"]] == [("config.prompt", "changed")]
    assert extract["fields"][0]["after"] == "A new prompt {{ input.claim_text }}"
    assert (notify["key"], notify["kind"], notify["after_position"]) == ("notify", "added", 'after "decide"')
    assert diff["edges"] == [{"source": "decide", "target": "notify", "when": "success", "kind": "added"}]
    assert diff["input_fields"] == [] and diff["settings"] == []
    assert '+ step "notify" (Pause) added' in diff["text"]
    # By default the newest version against the one before; backwards works too.
    assert client.get(url).json()["summary"] == diff["summary"]
    assert client.get(f"{url}?from=2&to=1").json()["summary"] == "1 step removed, 1 changed"
    assert client.get(f"{url}?from=one").status_code == 400
    assert client.get(f"{url}?from=7").status_code == 404


def test_the_first_version_is_compared_with_an_empty_workflow(reviewer, claims_workflow):
    diff = api(reviewer).get(f"/api/workflows/{claims_workflow.slug}/versions/diff/").json()
    assert diff["from"] is None and diff["to"] == 1 and diff["summary"].startswith("2 steps added")


def test_restore_a_version_as_the_draft(analyst, two_versions):
    client = api(analyst)
    response = client.post(f"/api/workflows/{two_versions.slug}/versions/1/restore/")
    assert response.status_code == 200
    draft = response.json()
    assert draft["number"] == 3 and [s["key"] for s in draft["graph"]["steps"]] == ["extract", "decide"]
    assert draft["undo_label"] == "Restore version 1"
    response = client.post(f"/api/workflows/{two_versions.slug}/versions/3/restore/")
    assert response.status_code == 409 and "Only a published version" in response.json()["detail"]


def test_the_schema_documents_the_errors(analyst):
    schema = api(analyst).get("/api/schema/?format=json").json()
    draft = schema["paths"]["/api/workflows/{slug}/draft/"]
    assert {"400", "403", "404", "409", "428"} <= set(draft["put"]["responses"])
    assert {"403", "404"} <= set(draft["get"]["responses"])
    assert "400" in schema["paths"]["/api/workflows/{slug}/draft/publish/"]["post"]["responses"]
