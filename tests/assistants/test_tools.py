"""Publishing workflows as MCP tools: who may, the refusals and their messages, the audit trail, what an agent is
offered (the selectors the endpoint serves), the pages, and one's API token."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from apps.accounts.models import ApiToken
from apps.accounts.services import api_token_issue, api_token_revoke
from apps.assistants.models import PublishedTool
from apps.assistants.selectors import mcp_input_schema, tool_list_for_user, tools_offered_to
from apps.assistants.services import workflow_tool_change, workflow_tool_publish, workflow_tool_withdraw
from apps.audit.models import AuditEvent
from apps.core.exceptions import Conflict, Forbidden, ValidationFailed
from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish

pytestmark = pytest.mark.django_db

SCHEMA = {
    "type": "object",
    "properties": {
        "text": {"type": "string", "title": "Text", "maxLength": 200},
        "n": {"type": "number", "minimum": 0},
        "urgent": {"type": "boolean"},
        "when": {"type": "string", "format": "date"},
        "notes": {"type": "string", "format": "textarea"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "priority": {"type": "string", "enum": ["low", "high"]},
        "claim": {"type": "object", "format": "document", "description": "The claim form."},
    },
    "required": ["text", "n", "urgent"],
    "x-order": ["text", "n", "urgent", "when", "notes", "tags", "priority", "claim"],
    "examples": [{"label": "A sample", "text": "hi", "n": 1}],
}
GRAPH = {"steps": [{"key": "echo", "type": "data.transform", "config": {"fields": {"double": "input.n * 2.0"}}}]}


def published(analyst, team, name="Echo", schema=None):
    workflow = workflow_create(actor=analyst, name=name, team=team)
    version = workflow_version_create(
        actor=analyst,
        workflow=workflow,
        graph=GRAPH,
        input_schema=schema or {"type": "object", "properties": {"n": {"type": "number"}}, "required": ["n"]},
    )
    workflow_version_publish(actor=analyst, version=version)
    return workflow


def events(verb):
    return list(AuditEvent.objects.filter(verb=verb).order_by("id"))


# --- services -----------------------------------------------------------------------------------------------------


def test_the_owner_publishes_changes_and_withdraws_each_audited(analyst, team):
    workflow = published(analyst, team)
    tool = workflow_tool_publish(actor=analyst, workflow=workflow, name="echo_number", description="  Doubles n.  ")
    assert (tool.name, tool.description, tool.enabled, tool.created_by) == ("echo_number", "Doubles n.", True, analyst)
    [event] = events("mcp_tool.published")
    assert event.stream == f"assistants.publishedtool:{tool.pk}" and event.actor_id == analyst.pk
    assert '"workflow":"echo"' in event.data and '"name":"echo_number"' in event.data

    workflow_tool_change(actor=analyst, tool=tool, name="echo-n", enabled=False)
    tool.refresh_from_db()
    assert (tool.name, tool.description, tool.enabled) == ("echo-n", "Doubles n.", False)
    [changed] = events("mcp_tool.changed")
    assert '"name":{"from":"echo_number","to":"echo-n"}' in changed.data
    assert '"enabled":{"from":true,"to":false}' in changed.data and "description" not in changed.data

    workflow_tool_change(actor=analyst, tool=tool, name="echo-n")  # nothing changes: nothing is recorded
    assert len(events("mcp_tool.changed")) == 1

    workflow_tool_withdraw(actor=analyst, tool=tool)
    assert not PublishedTool.objects.exists()
    [withdrawn] = events("mcp_tool.withdrawn")
    assert withdrawn.stream == event.stream and '"name":"echo-n"' in withdrawn.data


def test_only_those_who_may_change_the_workflow_manage_its_tool(analyst, reviewer, manager, outsider, team):
    workflow = published(analyst, team)
    for person in (reviewer, manager, outsider):
        with pytest.raises(Forbidden, match="Only those who may change this workflow"):
            workflow_tool_publish(actor=person, workflow=workflow, name="x", description="d")
    tool = workflow_tool_publish(actor=analyst, workflow=workflow, name="echo", description="d")
    for person in (reviewer, manager, outsider):
        with pytest.raises(Forbidden):
            workflow_tool_change(actor=person, tool=tool, enabled=False)
        with pytest.raises(Forbidden):
            workflow_tool_withdraw(actor=person, tool=tool)
    tool.refresh_from_db()
    assert tool.enabled and not events("mcp_tool.changed") and not events("mcp_tool.withdrawn")


@pytest.mark.parametrize(
    ("name", "description", "field", "message"),
    [
        ("", "d", "name", "Give the tool a name"),
        ("9lives", "d", "name", "starting with a letter"),
        ("has space", "d", "name", "letters, digits, _ and - only"),
        ("a" * 65, "d", "name", "at most 64 characters"),
        ("ok_name", "   ", "description", "agents choose tools by it"),
        ("ok_name", "x" * 2001, "description", "At most 2000 characters"),
    ],
)
def test_a_bad_name_or_description_is_refused_field_by_field(analyst, team, name, description, field, message):
    workflow = published(analyst, team)
    with pytest.raises(ValidationFailed) as refusal:
        workflow_tool_publish(actor=analyst, workflow=workflow, name=name, description=description)
    assert message in " ".join(refusal.value.fields[field])
    assert not PublishedTool.objects.exists() and not events("mcp_tool.published")


def test_a_taken_name_is_refused_whatever_its_case(analyst, team):
    first, second = published(analyst, team, "First"), published(analyst, team, "Second")
    workflow_tool_publish(actor=analyst, workflow=first, name="Triage", description="d")
    with pytest.raises(ValidationFailed) as refusal:
        workflow_tool_publish(actor=analyst, workflow=second, name="triage", description="d")
    assert refusal.value.fields["name"] == ["Another workflow is already published as “triage” (names ignore case)."]
    other = workflow_tool_publish(actor=analyst, workflow=second, name="other", description="d")
    with pytest.raises(ValidationFailed):
        workflow_tool_change(actor=analyst, tool=other, name="TRIAGE")
    with pytest.raises(Conflict, match="already offered as an MCP tool"):
        workflow_tool_publish(actor=analyst, workflow=first, name="again", description="d")


def test_a_workflow_with_nothing_published_or_archived_is_refused(analyst, team):
    draft_only = workflow_create(actor=analyst, name="Draft only", team=team)
    with pytest.raises(Conflict, match="has no published version yet"):
        workflow_tool_publish(actor=analyst, workflow=draft_only, name="draft", description="d")
    workflow = published(analyst, team)
    tool = workflow_tool_publish(actor=analyst, workflow=workflow, name="echo", description="d")
    workflow.archived_at = timezone.now()
    workflow.save()
    with pytest.raises(Conflict, match="is archived"):
        workflow_tool_change(actor=analyst, tool=tool, description="new")
    workflow_tool_change(actor=analyst, tool=tool, enabled=False)  # pausing an archived workflow's tool is fine
    archived = published(analyst, team, "Old")
    archived.archived_at = timezone.now()
    archived.save()
    with pytest.raises(Conflict, match="is archived"):
        workflow_tool_publish(actor=analyst, workflow=archived, name="old", description="d")


# --- what an agent is offered -------------------------------------------------------------------------------------


def test_agents_are_offered_enabled_tools_of_workflows_their_person_may_run(
    analyst, reviewer, manager, outsider, auditor, team
):
    workflow = published(analyst, team)
    tool = workflow_tool_publish(actor=analyst, workflow=workflow, name="echo", description="d")
    offered = {person.username: [o.tool.name for o in tools_offered_to(person)] for person in (analyst, reviewer)}
    assert offered == {"ana": ["echo"], "rita": ["echo"]}
    for person in (manager, outsider, auditor):  # may see (manager, auditor) or not (outsider); none may run
        assert tools_offered_to(person) == []
    assert [t.name for t in tool_list_for_user(manager)] == ["echo"]  # the page still shows it to the manager
    assert list(tool_list_for_user(outsider)) == []

    workflow_tool_change(actor=analyst, tool=tool, enabled=False)
    assert tools_offered_to(analyst) == [] and tools_offered_to(analyst, name="echo") == []


def test_the_input_schema_agents_see_is_the_published_versions_without_builder_details(analyst, team):
    schema = mcp_input_schema(SCHEMA)
    assert list(schema["properties"]) == ["text", "n", "urgent", "when", "notes", "tags", "priority", "claim"]
    assert schema["required"] == ["text", "n"]  # a yes/no field is never required (unticked is "no")
    assert schema["additionalProperties"] is False
    assert schema["properties"]["text"] == {"type": "string", "title": "Text", "maxLength": 200}
    assert schema["properties"]["when"] == {"type": "string", "format": "date"}
    assert schema["properties"]["notes"] == {"type": "string"}  # "textarea" is the Run form's business
    assert schema["properties"]["tags"] == {"type": "array", "items": {"type": "string"}}
    assert schema["properties"]["priority"] == {"type": "string", "enum": ["low", "high"]}
    claim = schema["properties"]["claim"]
    assert claim["required"] == ["document"] and claim["properties"]["document"]["type"] == "integer"
    assert claim["description"].startswith("The claim form. A document: upload the file with POST /api/documents/")
    assert "x-order" not in schema and "examples" not in schema


# --- pages --------------------------------------------------------------------------------------------------------


def client_for(user):
    client = Client()
    client.force_login(user)
    return client


def test_the_owner_publishes_from_the_workflow_page_with_errors_in_place(analyst, team):
    workflow = published(analyst, team)
    client = client_for(analyst)
    detail = client.get(f"/workflows/{workflow.slug}/").content.decode()
    assert f'href="/mcp-tools/workflow/{workflow.slug}/">MCP tool</a>' in detail

    bad = client.post(f"/mcp-tools/workflow/{workflow.slug}/", {"name": "2 bad", "description": ""})
    page = bad.content.decode()
    assert bad.status_code == 400 and not PublishedTool.objects.exists()
    assert 'id="tool-name-error"' in page and "starting with a letter" in page
    assert 'id="tool-description-error"' in page and 'value="2 bad"' in page  # what was typed is kept

    done = client.post(f"/mcp-tools/workflow/{workflow.slug}/", {"name": "echo", "description": "Doubles n."})
    assert done.status_code == 302 and PublishedTool.objects.get().name == "echo"
    page = client.get(f"/mcp-tools/workflow/{workflow.slug}/").content.decode()
    assert '<span class="badge badge--succeeded">Offered</span>' in page and "/mcp</code>" in page
    assert "Authorization: Bearer" in page and "<code>n</code>" in page

    client.post(f"/mcp-tools/workflow/{workflow.slug}/", {"name": "echo", "description": "Doubles n."})  # unticked
    assert PublishedTool.objects.get().enabled is False
    listing = client.get("/mcp-tools/").content.decode()
    assert "<code>echo</code>" in listing and "Paused" in listing

    confirm = client.get(f"/mcp-tools/workflow/{workflow.slug}/withdraw/")
    assert "Withdraw <code>echo</code>?" in confirm.content.decode()
    client.post(f"/mcp-tools/workflow/{workflow.slug}/withdraw/")
    assert not PublishedTool.objects.exists()


def test_a_refusal_shows_its_message_on_the_page(analyst, team):
    workflow = workflow_create(actor=analyst, name="Nothing yet", team=team)
    response = client_for(analyst).post(f"/mcp-tools/workflow/{workflow.slug}/", {"name": "x", "description": "d"})
    assert response.status_code == 400
    assert "has no published version yet" in response.content.decode()


def test_teammates_see_the_tool_on_the_list_but_cannot_manage_it(analyst, reviewer, outsider, team):
    workflow = published(analyst, team)
    workflow_tool_publish(actor=analyst, workflow=workflow, name="echo", description="Doubles n.")
    page = client_for(reviewer).get("/mcp-tools/").content.decode()
    assert "<code>echo</code>" in page and f'href="/workflows/{workflow.slug}/"' in page and "Yes" in page
    assert client_for(reviewer).post(f"/mcp-tools/workflow/{workflow.slug}/withdraw/").status_code == 403
    assert client_for(outsider).post(f"/mcp-tools/workflow/{workflow.slug}/withdraw/").status_code == 404
    assert "<code>echo</code>" not in client_for(outsider).get("/mcp-tools/").content.decode()
    assert PublishedTool.objects.count() == 1


# --- API tokens ---------------------------------------------------------------------------------------------------


def test_api_tokens_are_shown_once_stored_hashed_listed_and_revoked_each_audited(analyst, reviewer):
    client = client_for(analyst)
    assert "You have no API token." in client.get("/accounts/api-token/").content.decode()
    created = client.post("/accounts/api-token/", {"name": "Nightly export", "lifetime_days": "7"})
    token = ApiToken.objects.get(user=analyst)
    key = created.content.decode().split('id="token-key">')[1].split("<")[0]
    assert key.startswith(token.prefix) and created["Cache-Control"] == "no-store"
    # Only the SHA-256 is kept: nothing in the row is the token.
    assert token.digest == hashlib.sha256(key.encode()).hexdigest() and key not in str(vars(token))
    listed = client.get("/accounts/api-token/").content.decode()
    assert key not in listed and "Nightly export" in listed and f"{token.prefix}…" in listed  # shown once
    assert round((token.expires_at - token.created_at).total_seconds() / 86400) == 7

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert api.get("/api/workflows/").status_code == 200
    token.refresh_from_db()
    assert token.last_used_at is not None

    # Someone else's token cannot be revoked through one's own page.
    assert client_for(reviewer).post(f"/accounts/api-token/{token.pk}/revoke/").status_code == 404
    client.post(f"/accounts/api-token/{token.pk}/revoke/")
    # Refused, not treated as anonymous: 401 with the Bearer challenge, so a client knows to get a new token.
    refused = api.get("/api/workflows/")
    assert refused.status_code == 401 and refused.json()["detail"] == "Invalid, expired or revoked API token."
    assert refused["WWW-Authenticate"] == 'Bearer realm="api"'
    assert "Revoked" in client.get("/accounts/api-token/").content.decode()
    verbs = list(AuditEvent.objects.filter(verb__startswith="api_token.").order_by("id").values_list("verb", "data"))
    assert [verb for verb, _ in verbs] == ["api_token.created", "api_token.revoked"]
    assert all(key not in json.dumps(data) and token.digest not in json.dumps(data) for _, data in verbs)
    token.refresh_from_db()
    assert api_token_revoke(token=token, actor=analyst) is False  # nothing left to revoke: nothing recorded
    assert AuditEvent.objects.filter(verb="api_token.revoked").count() == 1


def test_an_expired_api_token_is_refused(analyst):
    token, key = api_token_issue(user=analyst, name="short", lifetime_days=1)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert api.get("/api/workflows/").status_code == 200
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    refused = api.get("/api/workflows/")
    assert refused.status_code == 401 and refused.json()["detail"] == "Invalid, expired or revoked API token."
    assert refused["WWW-Authenticate"] == 'Bearer realm="api"'


def test_an_api_request_without_credentials_is_challenged_and_a_session_still_works(analyst):
    """No credentials: 401 with the Bearer challenge (not a 403 that reads like a missing right). A signed-in
    browser session needs no header and keeps its CSRF check on unsafe methods."""
    anonymous = APIClient().get("/api/workflows/")
    assert anonymous.status_code == 401 and anonymous["WWW-Authenticate"] == 'Bearer realm="api"'
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(analyst)
    assert browser.get("/api/workflows/").status_code == 200
    refused = browser.post("/api/workflows/", {"name": "No token"}, content_type="application/json")
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]


def test_a_token_page_form_with_bad_input_says_why_and_keeps_nothing(analyst):
    client = client_for(analyst)
    response = client.post("/accounts/api-token/", {"name": "  ", "lifetime_days": "100000"})
    assert response.status_code == 400 and not ApiToken.objects.exists()
    page = response.content.decode()
    assert "This field is required." in page and "Select a valid choice." in page


def test_administrators_list_tokens_without_their_secrets_and_revoke_a_leaked_one(analyst, admin_user_role):
    token, key = api_token_issue(user=analyst, name="Leaked one", lifetime_days=30)
    admin_client = client_for(admin_user_role)
    listing = admin_client.get("/admin/accounts/apitoken/")
    assert listing.status_code == 200
    page = listing.content.decode()
    assert "Leaked one" in page and token.prefix in page and token.digest not in page and key not in page
    assert admin_client.get("/admin/authtoken/").status_code == 404  # DRF's clear-text token admin is gone
    response = admin_client.post(
        "/admin/accounts/apitoken/", {"action": "revoke", "_selected_action": [str(token.pk)]}, follow=True
    )
    assert "1 token(s) revoked." in response.content.decode()
    token.refresh_from_db()
    assert token.revoked_at is not None
    event = AuditEvent.objects.get(verb="api_token.revoked")
    assert event.actor_id == admin_user_role.pk
    # The admin's own "change password" link is the audited page.
    assert admin_client.get("/admin/password_change/").url == "/accounts/password/"
