"""The connection pages and API: an admin creates one through the form (tested first against a real server;
nothing saved when the test fails unless asked), secrets are write-only everywhere, writes by persona, and the
builder offers the connections a person may use."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from rest_framework.test import APIClient

from apps.audit.models import AuditEvent
from apps.connectors.models import Connection
from tests.connectors.helpers import allow_loopback, make_connection
from tests.connectors.servers import ApiServer

pytestmark = pytest.mark.django_db
SECRET = "tok-page-secret-0001"


def _client(user: Any = None) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_login(user)
    return client


def _form(api: ApiServer, team: Any, **extra: str) -> dict[str, str]:
    return {
        "name": "erp",
        "label": "ERP",
        "description": "Invoices and postings",
        "team": str(team.pk),
        "config_base_url": f"{api.url}/api/",
        "config_timeout_seconds": "10",
        "config_auth": "bearer",
        "config_token_auth_method": "client_secret_basic",
        "config_headers": "Accept: application/json",
        "secret_token": SECRET,
        **extra,
    }


@pytest.fixture
def api(settings: Any):
    allow_loopback(settings)
    with ApiServer(static_tokens={SECRET}) as server:
        yield server


def test_admin_creates_a_connection_tested_first_and_never_sees_the_secret_again(api, admin_user_role, team):
    client = _client(admin_user_role)
    assert client.get("/connections/new/").status_code == 200
    page = client.get("/connections/new/?kind=http")
    assert page.status_code == 200 and "Test connection" in page.content.decode()
    response = client.post("/connections/new/?kind=http", _form(api, team))
    assert response.status_code == 302 and response["Location"] == "/connections/erp/"
    connection = Connection.objects.get(name="erp")
    assert connection.secrets == {"token": SECRET} and connection.last_test_ok is True
    assert connection.config["headers"] == {"Accept": "application/json"}
    assert api.requests[-1].headers["authorization"] == f"Bearer {SECRET}"
    detail = client.get("/connections/erp/").content.decode()
    assert SECRET not in detail and "Set" in detail and "Change history" in detail and "Created" in detail


def test_a_failed_test_saves_nothing_unless_asked(api, admin_user_role, team):
    client = _client(admin_user_role)
    response = client.post("/connections/new/?kind=http", _form(api, team, secret_token="tok-wrong-0002"))
    page = response.content.decode()
    assert response.status_code == 400
    assert "Nothing was saved because the test failed" in page and "answered HTTP 401" in page
    assert "tok-wrong-0002" not in page
    assert not Connection.objects.exists()
    response = client.post(
        "/connections/new/?kind=http", _form(api, team, secret_token="tok-wrong-0002", save_anyway="on")
    )
    assert response.status_code == 302
    assert Connection.objects.get(name="erp").last_test_ok is False


def test_bad_settings_show_under_their_fields_and_keep_the_input(api, admin_user_role, team):
    client = _client(admin_user_role)
    response = client.post(
        "/connections/new/?kind=http",
        _form(api, team, config_base_url="ftp://erp", config_headers="Authorization: Bearer x"),
    )
    page = response.content.decode()
    assert response.status_code == 400
    assert "Give a URL starting with http:// or https://." in page and "carries credentials" in page
    assert 'value="ftp://erp"' in page and not Connection.objects.exists()


def test_editing_keeps_a_blank_secret_and_the_test_button_answers_inline(api, admin_user_role, team):
    make_connection(team, config={"base_url": f"{api.url}/api/", "auth": "bearer"}, secrets={"token": SECRET})
    client = _client(admin_user_role)
    form = _form(api, team, label="ERP (prod)", secret_token="")
    fragment = client.post("/connections/erp/test/", form, HTTP_HX_REQUEST="true")
    assert fragment.status_code == 200 and "The test passed" in fragment.content.decode()
    assert "<html" not in fragment.content.decode()
    assert client.post("/connections/erp/", form).status_code == 302
    connection = Connection.objects.get(name="erp")
    assert connection.label == "ERP (prod)" and connection.secrets == {"token": SECRET}
    # The stored settings' test (no form fields) is recorded on the connection.
    stored = client.post("/connections/erp/test/", {}, HTTP_HX_REQUEST="true")
    assert "The test passed" in stored.content.decode()
    assert AuditEvent.objects.filter(verb="connection.tested", target_id=str(connection.pk)).count() == 2


def test_the_mailbox_form_refuses_clear_text_to_another_machine(admin_user_role, team):
    """Without TLS the mailbox's password travels in clear text: the form refuses it for an address that is not
    this machine, under the TLS box, and saves nothing. A host name is checked when connecting."""
    client = _client(admin_user_role)
    form = {
        "name": "inbox",
        "label": "Inbox",
        "team": str(team.pk),
        "config_host": "10.1.2.3",
        "config_port": "143",
        "config_username": "inbox@example.com",
        "config_folder": "INBOX",
        "secret_password": "imap-pw-0001",
        "save_anyway": "on",
    }
    response = client.post("/connections/new/?kind=mailbox", form)
    page = response.content.decode()
    assert response.status_code == 400 and not Connection.objects.exists()
    assert "Turn this on: 10.1.2.3 is not this machine" in page and "imap-pw-0001" not in page
    tested = client.post("/connections/new/test/?kind=mailbox", form, HTTP_HX_REQUEST="true").content.decode()
    assert "Fix the settings first" in tested and "without TLS the mailbox&#x27;s password" in tested
    assert "Off only for a mail server on this machine" in client.get("/connections/new/?kind=mailbox").content.decode()


def test_delete_is_refused_while_a_published_version_names_it(api, admin_user_role, analyst, team):
    from tests.connectors.test_services import _publish_using

    make_connection(team, config={"base_url": api.url})
    _publish_using(analyst, team, "erp")
    client = _client(admin_user_role)
    confirm = client.get("/connections/erp/delete/").content.decode()
    assert "It cannot be deleted" in confirm and "Post invoices" in confirm
    client.post("/connections/erp/delete/")
    assert Connection.objects.filter(name="erp").exists()
    make_connection(team, name="spare", config={"base_url": api.url})
    assert client.post("/connections/spare/delete/").status_code == 302
    assert not Connection.objects.filter(name="spare").exists()


# Writes by persona on the analyst's team's connection: nobody among the personas manages it; those who use it are
# told no (403), the others may not know it (404); anonymous is sent to sign in. Nothing changes for any of them.
WRITES = {"analyst": 403, "reviewer": 403, "manager": 404, "outsider": 404, "anonymous": 302}


@pytest.mark.parametrize("persona", sorted(WRITES))
def test_writes_by_persona(request, api, persona, team, admin_user_role):
    connection = make_connection(team, config={"base_url": api.url})
    user = None if persona == "anonymous" else request.getfixturevalue(persona)
    client = _client(user)
    expected = WRITES[persona]
    for url in ("/connections/erp/test/", "/connections/erp/toggle/", "/connections/erp/delete/", "/connections/erp/"):
        assert client.post(url, {"label": "Hijacked"}).status_code == expected, (persona, url)
    new_test = client.post("/connections/new/test/?kind=http", _form(api, team))
    assert new_test.status_code == (302 if persona == "anonymous" else 403)
    api_client = _client(user)
    api_expected = {302: 401}.get(expected, expected)
    assert api_client.post("/api/connections/erp/test/").status_code == api_expected
    assert api_client.patch("/api/connections/erp/", {"label": "x"}, format="json").status_code == api_expected
    assert api_client.delete("/api/connections/erp/").status_code == api_expected
    created = api_client.post(
        "/api/connections/", {"name": "x", "label": "X", "kind": "http", "team": team.slug}, format="json"
    )
    assert created.status_code == (401 if persona == "anonymous" else 403)
    fresh = Connection.objects.get(pk=connection.pk)
    assert (fresh.label, fresh.enabled, fresh.last_tested_at) == ("ERP", True, None)
    assert Connection.objects.count() == 1 and api.requests == []
    # The same writes by an admin go through.
    admin = _client(admin_user_role)
    assert admin.post("/connections/erp/toggle/").status_code == 302
    assert Connection.objects.get(pk=connection.pk).enabled is False


def test_api_secrets_are_write_only(api, admin_user_role, analyst, team):
    client = _client(admin_user_role)
    body = {
        "name": "erp",
        "label": "ERP",
        "kind": "http",
        "team": team.slug,
        "config": {"base_url": f"{api.url}/api/", "auth": "bearer"},
        "secrets": {"token": SECRET},
    }
    created = client.post("/api/connections/", body, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["secrets_set"] == ["token"] and SECRET not in created.content.decode()
    tested = client.post("/api/connections/erp/test/")
    assert tested.json()["ok"] is True
    api.static_tokens.add("tok-new-0003")  # the change is tested before it is saved
    changed = client.patch(
        "/api/connections/erp/", {"secrets": {"token": "tok-new-0003"}, "enabled": False}, format="json"
    )
    assert changed.status_code == 200 and changed.json()["enabled"] is False
    assert Connection.objects.get(name="erp").secrets == {"token": "tok-new-0003"}
    refused = client.patch("/api/connections/erp/", {"kind": "sql"}, format="json")
    assert refused.status_code == 400
    listed = _client(analyst).get("/api/connections/").json()
    assert [item["name"] for item in listed["results"]] == ["erp"]
    for response in (created, tested, changed, refused):
        assert SECRET not in response.content.decode() and "tok-new" not in response.content.decode()
    data = json.dumps(list(AuditEvent.objects.values_list("data", flat=True)))
    assert SECRET not in data and "tok-new" not in data


def test_list_pages_show_what_the_persona_may_see(api, analyst, manager, team):
    make_connection(team, config={"base_url": api.url})
    page = _client(analyst).get("/connections/").content.decode()
    assert "/connections/erp/" in page and "New connection" not in page
    empty = _client(manager).get("/connections/").content.decode()
    assert "/connections/erp/" not in empty and "No connection is shared with your teams yet" in empty
    filtered = _client(analyst).get("/connections/?kind=sql").content.decode()
    assert "No connection matches these filters" in filtered
    team_page = _client(analyst).get(f"/connections/teams/{team.slug}/").content.decode()
    assert "/connections/erp/" in team_page
    detail = _client(analyst).get("/connections/erp/").content.decode()
    assert "Settings" in detail and "Test connection" not in detail and "Change history" not in detail


def test_the_builder_offers_the_connections_the_person_may_use(api, analyst, team):
    from apps.workflows.views import _choices

    make_connection(team, config={"base_url": api.url})
    assert ("erp", "ERP (erp)") in _choices(analyst)["connection-http"]
    assert _choices(analyst)["connection-http"][0] == ("", "No connection")


def test_only_admins_change_where_a_connection_may_go_and_each_change_is_audited(api, admin_user_role, analyst, team):
    """Review M4: per-connection destination and port allowlists, edited by admins on the connection's form;
    a manager of the connection sees them but cannot change them (the page's fields are disabled, and the service
    refuses); every change is in the audit chain with before and after."""
    from guardian.shortcuts import assign_perm

    from apps.connectors.services import connection_update
    from apps.core.exceptions import ValidationFailed

    connection = make_connection(
        team, config={"base_url": f"{api.url}/api/", "auth": "bearer"}, secrets={"token": SECRET}
    )
    admin = _client(admin_user_role)
    form = _form(api, team, secret_token="", allowed_hosts="127.0.0.1/32\nerp.example.com", allowed_ports="8443, 9443")
    assert admin.post("/connections/erp/", form).status_code == 302
    connection.refresh_from_db()
    assert connection.allowed_hosts == ["erp.example.com", "127.0.0.1/32"] and connection.allowed_ports == [8443, 9443]
    event = AuditEvent.objects.filter(verb="connection.changed", target_id=str(connection.pk)).latest("id")
    assert json.loads(event.data)["fields"]["allowlists"] == {
        "before": {"hosts": [], "ports": []},
        "after": {"hosts": ["erp.example.com", "127.0.0.1/32"], "ports": [8443, 9443]},
    }
    bad = admin.post("/connections/erp/", {**form, "allowed_hosts": "not a host!", "allowed_ports": "http"})
    assert bad.status_code == 400
    assert "is neither a host name" in bad.content.decode() and "is not a port number" in bad.content.decode()

    assign_perm("connectors.manage_connection", analyst, connection)
    manager = _client(analyst)
    page = manager.get("/connections/erp/").content.decode()
    tags = re.findall(r"<(?:textarea|input)[^>]*name=\"allowed_(?:hosts|ports)\"[^>]*>", page)
    assert len(tags) == 2 and all("disabled" in tag for tag in tags), tags
    assert manager.post("/connections/erp/", {**form, "allowed_hosts": "", "allowed_ports": ""}).status_code == 302
    connection.refresh_from_db()
    assert connection.allowed_hosts == ["erp.example.com", "127.0.0.1/32"]  # the disabled fields kept the values
    with pytest.raises(ValidationFailed) as refused:
        connection_update(actor=analyst, connection=connection, allowed_hosts=[], allowed_ports=[])
    assert "Only admins" in refused.value.fields["allowed_hosts"][0]


@pytest.mark.parametrize("kind", ["smtp", "sql", "mailbox", "mcp"])
def test_every_kind_shows_where_it_may_go_to_admins(admin_user_role, team, kind):
    """Review M4: SMTP, SQL, IMAP and MCP connections reach a private address or another port only through their
    allowlists, so their form has the fields too (not only HTTP's)."""
    config = {"mcp": {"transport": "http", "url": "https://tools.example.com/mcp"}}.get(kind)
    make_connection(team, name="other", kind=kind, config=config)
    page = _client(admin_user_role).get("/connections/other/").content.decode()
    tags = re.findall(r"<(?:textarea|input)[^>]*name=\"allowed_(?:hosts|ports)\"[^>]*>", page)
    assert len(tags) == 2 and not any("disabled" in tag for tag in tags), tags
    assert "on the protocol's own ports" in page
