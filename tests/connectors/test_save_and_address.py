"""Saving a connection: the pages and the API test the settings first through one service (connection_save),
a failed test saves nothing unless asked, and changing where a connection goes (an address setting) never
sends the stored secrets there: they must be entered again, for the test button as for the save."""

from __future__ import annotations

from typing import Any

import pytest

from apps.audit.models import AuditEvent
from apps.connectors.models import Connection
from apps.connectors.services import ConnectionTestFailed, connection_save, connection_update
from apps.core.exceptions import ValidationFailed
from tests.connectors.helpers import allow_loopback, make_connection
from tests.connectors.servers import ApiServer
from tests.connectors.test_pages import _client, _form

pytestmark = pytest.mark.django_db
SECRET = "tok-stored-secret-0001"


@pytest.fixture
def servers(settings: Any):
    """The connection's real server, and a server of the person changing it."""
    allow_loopback(settings)
    with ApiServer(static_tokens={SECRET}) as real, ApiServer() as theirs:
        yield real, theirs


def _received(server: ApiServer) -> str:
    return repr([(r.path, r.headers) for r in server.requests])


def test_a_new_address_needs_the_secret_again_for_the_save(servers, admin_user_role, team):
    real, theirs = servers
    connection = make_connection(
        team, config={"base_url": f"{real.url}/api/", "auth": "bearer"}, secrets={"token": SECRET}
    )
    with pytest.raises(ValidationFailed) as refused:
        connection_update(
            actor=admin_user_role,
            connection=connection,
            config={"base_url": f"{theirs.url}/api/", "auth": "bearer"},
            secrets={"token": ""},
        )
    assert list(refused.value.fields) == ["secrets.token"] and "again" in refused.value.fields["secrets.token"][0]
    connection.refresh_from_db()
    assert connection.config["base_url"] == f"{real.url}/api/" and connection.secrets == {"token": SECRET}
    # Entered again, it is saved; the same address with a blank secret keeps the stored one as before.
    connection_update(
        actor=admin_user_role,
        connection=connection,
        config={"base_url": f"{theirs.url}/api/", "auth": "bearer"},
        secrets={"token": "tok-their-0002"},
    )
    connection.refresh_from_db()
    assert connection.secrets == {"token": "tok-their-0002"}
    assert SECRET not in _received(theirs)


@pytest.mark.parametrize(
    ("kind", "config", "change"),
    [
        ("sql", {"host": "db.example.com", "database": "erp", "username": "reader"}, {"port": 5433}),
        ("sql", {"host": "db.example.com", "database": "erp", "username": "reader"}, {"dialect": "mysql", "port": 0}),
        ("smtp", {"host": "smtp.example.com", "from_address": "a@example.com", "username": "u"}, {"host": "mx.io"}),
        ("mailbox", {"host": "imap.example.com", "username": "inbox@example.com"}, {"host": "imap.evil.io"}),
        (
            "http",
            {
                "base_url": "https://erp.example.com/",
                "auth": "oauth2_client_credentials",
                "token_url": "https://id.example.com/token",
                "client_id": "aios",
            },
            {"token_url": "https://id.evil.io/token"},
        ),
    ],
)
def test_every_address_setting_counts(admin_user_role, team, kind, config, change):
    key = "client_secret" if kind == "http" else "password"
    connection = make_connection(team, kind=kind, config=config, secrets={key: "stored-secret-0003"})
    with pytest.raises(ValidationFailed) as refused:
        connection_update(actor=admin_user_role, connection=connection, config={**config, **change}, secrets={})
    assert list(refused.value.fields) == [f"secrets.{key}"]
    connection.refresh_from_db()
    assert connection.config == {**connection.config, **config}


def test_the_page_test_button_and_save_do_not_send_stored_secrets_to_a_new_address(servers, admin_user_role, team):
    real, theirs = servers
    make_connection(team, config={"base_url": f"{real.url}/api/", "auth": "bearer"}, secrets={"token": SECRET})
    client = _client(admin_user_role)
    form = _form(real, team, secret_token="", config_base_url=f"{theirs.url}/collect/")
    fragment = client.post("/connections/erp/test/", form, HTTP_HX_REQUEST="true")
    assert fragment.status_code == 200 and "again" in fragment.content.decode()
    page = client.post("/connections/erp/", form)
    assert page.status_code == 400 and "again" in page.content.decode()
    assert theirs.requests == [] and real.requests == []
    assert Connection.objects.get(name="erp").config["base_url"] == f"{real.url}/api/"


def test_the_api_does_not_send_stored_secrets_to_a_new_address(servers, admin_user_role, team):
    real, theirs = servers
    make_connection(team, config={"base_url": f"{real.url}/api/", "auth": "bearer"}, secrets={"token": SECRET})
    client = _client(admin_user_role)
    config = {"base_url": f"{theirs.url}/collect/", "auth": "bearer"}
    response = client.patch("/api/connections/erp/", {"config": config}, format="json")
    assert response.status_code == 400 and "secrets.token" in response.json()["fields"], response.content
    assert theirs.requests == []
    assert Connection.objects.get(name="erp").config["base_url"] == f"{real.url}/api/"


def test_the_api_tests_before_saving_and_saves_a_failing_connection_only_when_asked(servers, admin_user_role, team):
    real, _ = servers
    client = _client(admin_user_role)
    body = {
        "name": "erp",
        "label": "ERP",
        "kind": "http",
        "team": team.slug,
        "config": {"base_url": f"{real.url}/api/", "auth": "bearer"},
        "secrets": {"token": "tok-wrong-0004"},
    }
    refused = client.post("/api/connections/", body, format="json")
    assert refused.status_code == 422, refused.content
    answer = refused.json()
    assert answer["test"]["ok"] is False and "HTTP 401" in answer["detail"] and "unauthorised" in answer["detail"]
    assert "tok-wrong" not in refused.content.decode()
    assert not Connection.objects.exists()
    assert AuditEvent.objects.filter(verb="connection.tested").count() == 1
    saved = client.post("/api/connections/", {**body, "save_even_if_test_fails": True}, format="json")
    assert saved.status_code == 201 and saved.json()["last_test_ok"] is False
    assert "HTTP 401" in saved.json()["last_test_message"]
    # A change that fails its test is not saved either; one that passes is, with the result recorded.
    changed = client.patch(
        "/api/connections/erp/", {"label": "ERP (prod)", "secrets": {"token": "tok-x-0005"}}, format="json"
    )
    assert changed.status_code == 422
    assert Connection.objects.get(name="erp").label == "ERP"
    fixed = client.patch("/api/connections/erp/", {"secrets": {"token": SECRET}}, format="json")
    assert fixed.status_code == 200 and fixed.json()["last_test_ok"] is True
    # A label alone is not about reaching the server: saved without a test.
    renamed = client.patch("/api/connections/erp/", {"label": "ERP (prod)"}, format="json")
    assert renamed.status_code == 200 and renamed.json()["label"] == "ERP (prod)"


def test_the_service_refuses_a_failed_test_with_its_result(servers, admin_user_role, team):
    real, _ = servers
    with pytest.raises(ConnectionTestFailed) as failed:
        connection_save(
            actor=admin_user_role,
            connection=None,
            kind="http",
            name="erp",
            label="ERP",
            team=team,
            config={"base_url": f"{real.url}/api/", "auth": "bearer"},
            secrets={"token": "tok-wrong-0006"},
        )
    assert failed.value.status_code == 422 and not failed.value.result.ok
    assert not Connection.objects.exists()
