"""A secret never leaks through an error about it: a secret with a line break is refused at the door (form, API,
service), the one HTTP door refuses a header it cannot send without quoting its value, and redaction also
finds the escaped forms libraries write (repr, bytes repr, JSON)."""

from __future__ import annotations

import pytest

from apps.audit.models import AuditEvent
from apps.connectors.models import Connection
from apps.connectors.probes import probe
from apps.connectors.runtime import redact
from apps.connectors.services import connection_test, secrets_merge
from apps.core import http
from apps.core.exceptions import ValidationFailed
from tests.connectors.helpers import allow_loopback, make_connection
from tests.connectors.servers import ApiServer

SECRET = "tok-leak-0001\nX-Injected: yes"


@pytest.mark.parametrize("value", [SECRET, "tok\r-leak-0002", "tok-leak\x00-0003", "tok-leak-0004\x7f"])
def test_a_secret_with_a_control_character_is_refused_under_its_field(value):
    with pytest.raises(ValidationFailed) as refused:
        secrets_merge("http", {}, {"token": value})
    assert list(refused.value.fields) == ["secrets.token"]
    assert value not in str(refused.value.fields)


def test_the_api_refuses_such_a_secret_and_saves_nothing(admin_user_role, team):
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(admin_user_role)
    body = {
        "name": "erp",
        "label": "ERP",
        "kind": "http",
        "team": team.slug,
        "config": {"base_url": "https://erp.example.com/", "auth": "bearer"},
        "secrets": {"token": SECRET},
        "save_even_if_test_fails": True,
    }
    response = client.post("/api/connections/", body, format="json")
    assert response.status_code == 400, response.content
    assert "secrets.token" in response.json()["fields"] and "tok-leak" not in response.content.decode()
    assert not Connection.objects.exists()


def test_the_http_door_refuses_an_unsendable_header_without_its_value(settings):
    allow_loopback(settings)
    with ApiServer() as api:
        for value in (SECRET, "Bearer tok-leak-€-0005"):
            with pytest.raises(http.OutboundError) as refused:
                http.request("GET", f"{api.url}/health", headers={"Authorization": value}, timeout=2)
            assert "tok-leak" not in str(refused.value) and "nothing was sent" in str(refused.value)
            assert not refused.value.uncertain
        assert api.requests == []


def test_a_stored_secret_with_a_line_break_never_reaches_the_test_message_or_the_audit(settings, team):
    """A secret stored before line breaks were refused: the test fails with a reason that holds no piece of it."""
    allow_loopback(settings)
    with ApiServer(static_tokens={"tok-leak-0001"}) as api:
        connection = make_connection(
            team, config={"base_url": f"{api.url}/api/", "auth": "bearer"}, secrets={"token": "tok-leak-0001"}
        )
        connection.secrets = {"token": SECRET}  # as an older version could have stored it
        connection.save()
        result = connection_test(actor=None, connection=connection)
        assert not result.ok and "header" in result.message
        connection.refresh_from_db()
        audit = AuditEvent.objects.filter(verb="connection.tested").latest("pk")
        for text in (result.message, connection.last_test_message, str(audit.data)):
            assert "tok-leak" not in text and "X-Injected" not in text, text
        assert probe("http", connection.config, {"token": SECRET}).message == result.message


def test_redaction_finds_the_escaped_forms_of_a_secret():
    needles = [SECRET, 'pw"quoted\\back']
    texts = [
        f"Invalid header value {('Bearer ' + SECRET).encode()!r}",
        f"ValueError({SECRET!r})",
        '{"token": "tok-leak-0001\\nX-Injected: yes"}',
        "server said: tok-leak-0001",
        f"{'pw' + chr(34) + 'quoted' + chr(92) + 'back'!r}",
    ]
    for text in texts:
        cleaned = redact(text, needles)
        assert "tok-leak" not in cleaned and "quoted" not in cleaned, (text, cleaned)
        assert "[secret]" in cleaned
