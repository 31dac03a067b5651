"""Credentials at rest: MultiFernet keys, rotation for real (encrypt with the old key, switch the settings, read
with both, re-encrypt with the command, drop the old key), and the one-key setting still working."""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection as db

from apps.connectors.models import Connection
from apps.core.exceptions import ApplicationError
from apps.core.secrets import encrypted_fields, secret_decrypt, secret_encrypt, secret_rotate
from apps.inference.models import ModelEndpoint
from tests.connectors.helpers import make_connection

OLD, NEW = "old-credentials-key-0123456789", "new-credentials-key-9876543210"


def _raw_secrets(connection: Connection) -> str:
    with db.cursor() as cursor:
        cursor.execute("SELECT secrets_encrypted FROM connectors_connection WHERE id = %s", [connection.pk])
        return str(cursor.fetchone()[0])


def _text(response: Any) -> str:
    return str(response.content.decode()).replace("&#x27;", "'")


def test_the_single_key_setting_still_encrypts_and_decrypts(settings):
    settings.AIOS_CREDENTIALS_KEYS = []
    settings.AIOS_CREDENTIALS_KEY = OLD
    stored = secret_encrypt("token-value")
    assert stored.startswith("fernet:") and "token-value" not in stored
    assert secret_decrypt(stored) == "token-value"
    settings.AIOS_CREDENTIALS_KEY = NEW
    with pytest.raises(ApplicationError, match="cannot be decrypted"):
        secret_decrypt(stored)


def test_the_first_key_encrypts_and_every_key_decrypts(settings):
    settings.AIOS_CREDENTIALS_KEYS = [OLD]
    old_form = secret_encrypt("s3cret")
    settings.AIOS_CREDENTIALS_KEYS = [NEW, OLD]
    new_form = secret_encrypt("s3cret")
    assert secret_decrypt(old_form) == secret_decrypt(new_form) == "s3cret"
    settings.AIOS_CREDENTIALS_KEYS = [NEW]
    assert secret_decrypt(new_form) == "s3cret"
    with pytest.raises(ApplicationError):
        secret_decrypt(old_form)
    assert secret_decrypt(secret_rotate(new_form)) == "s3cret"


@pytest.mark.django_db
def test_rotation_re_encrypts_connections_and_endpoint_tokens(settings, team):
    settings.AIOS_CREDENTIALS_KEYS = [OLD]
    http = make_connection(
        team,
        name="erp",
        config={"base_url": "https://erp.example.com/", "auth": "bearer"},
        secrets={"token": "tok-erp-1234"},
    )
    mailbox = make_connection(team, name="inbox", kind="mailbox", secrets={"password": "mail-pw-5678"})
    make_connection(team, name="open-api", config={"base_url": "https://open.example.com/"})  # no secrets
    endpoint = ModelEndpoint(name="gpu", url="http://gpu.example.com")
    endpoint.token = "endpoint-token-42"
    endpoint.save()
    before = {c.pk: _raw_secrets(c) for c in (http, mailbox)}
    assert all("tok-erp" not in raw and "mail-pw" not in raw for raw in before.values())

    settings.AIOS_CREDENTIALS_KEYS = [NEW, OLD]
    out = StringIO()
    call_command("credentials_rotate", stdout=out)
    report = out.getvalue()
    assert report.startswith("Re-encrypted ") and report.rstrip().endswith("with the first key.")
    for part in ("2 connection secret(s)", "1 model endpoint token(s)", "0 webhook signing secret(s)"):
        assert part in report
    assert all(_raw_secrets(c) != before[c.pk] for c in (http, mailbox))

    settings.AIOS_CREDENTIALS_KEYS = [NEW]  # the old key is gone: everything still reads
    assert Connection.objects.get(name="erp").secrets == {"token": "tok-erp-1234"}
    assert Connection.objects.get(name="inbox").secrets == {"password": "mail-pw-5678"}
    assert ModelEndpoint.objects.get(name="gpu").token == "endpoint-token-42"


@pytest.mark.django_db
def test_rotation_reports_what_no_key_can_read_and_leaves_it(settings, team):
    settings.AIOS_CREDENTIALS_KEYS = ["a-key-that-will-be-lost-000000"]
    make_connection(
        team,
        name="lost",
        config={"base_url": "https://x.example.com/", "auth": "bearer"},
        secrets={"token": "tok-lost-1234"},
    )
    settings.AIOS_CREDENTIALS_KEYS = [NEW]
    raw = _raw_secrets(Connection.objects.get(name="lost"))
    with pytest.raises(CommandError, match="1 stored credential"):
        call_command("credentials_rotate", stdout=StringIO())
    assert _raw_secrets(Connection.objects.get(name="lost")) == raw


@pytest.mark.django_db
def test_secrets_are_one_encrypted_token_of_a_json_object(settings, team):
    settings.AIOS_CREDENTIALS_KEYS = [NEW]
    connection = make_connection(
        team,
        name="oauth",
        config={
            "base_url": "https://api.example.com/",
            "auth": "oauth2_client_credentials",
            "token_url": "https://id.example.com/token",
            "client_id": "aios",
        },
        secrets={"client_secret": "cs-0001-abcd"},
    )
    raw = _raw_secrets(connection)
    assert raw.startswith("fernet:") and "cs-0001" not in raw and "client_secret" not in raw
    assert json.loads(secret_decrypt(raw)) == {"client_secret": "cs-0001-abcd"}
    with db.cursor() as cursor:
        cursor.execute("SELECT row_to_json(h)::text FROM connectors_historicalconnection h")
        assert all("cs-0001" not in row[0] and "fernet:" not in row[0] for row in cursor.fetchall())


def test_every_column_that_stores_encrypted_secrets_is_registered_for_rotation():
    """A column holding `secret_encrypt` output that rotation does not know would stop decrypting the day the old
    key is dropped: each app registers its columns, and each registered column exists."""
    from django.apps import apps

    registered = {(column.model.lower(), column.field) for column in encrypted_fields()}
    assert {
        ("connectors.connection", "secrets_encrypted"),
        ("inference.modelendpoint", "token_encrypted"),
        ("workflows.trigger", "secret"),
    } <= registered
    for column in encrypted_fields():
        apps.get_model(column.model)._meta.get_field(column.field)


@pytest.mark.django_db
def test_a_connection_no_key_can_read_is_listed_shown_and_its_secrets_entered_again(
    settings, team, admin_user_role, analyst
):
    """Secrets saved under a key that has since been dropped: the lists, the pages and the API answer (the secrets
    shown as unreadable, their names unknown), the stored test says why it cannot run, a step keeps failing with
    the reason, a save without them is refused under the field and changes nothing, and an admin re-enters them."""
    from rest_framework.test import APIClient

    from apps.connectors.runtime import ConnectionUnavailable, connection_for_step
    from tests.connectors.helpers import allow_loopback
    from tests.connectors.servers import ApiServer
    from tests.connectors.test_services import _publish_using

    allow_loopback(settings)
    settings.AIOS_CREDENTIALS_KEYS = ["a-key-that-will-be-lost-000000"]
    with ApiServer(static_tokens={"tok-new-5678"}) as api:
        lost = make_connection(
            team, name="lost", config={"base_url": f"{api.url}/api/", "auth": "bearer"}, secrets={"token": "tok-1234"}
        )
        workflow = _publish_using(analyst, team, "lost")
        settings.AIOS_CREDENTIALS_KEYS = [NEW]
        make_connection(
            team, name="fine", config={"base_url": f"{api.url}/api/", "auth": "bearer"}, secrets={"token": "tok-5678"}
        )
        raw = _raw_secrets(lost)
        unreadable = "cannot be read with the server's keys: re-enter them (or restore the key)"

        for person in (admin_user_role, analyst):
            client = APIClient()
            client.force_login(person)
            listed = client.get("/api/connections/")
            assert listed.status_code == 200, listed.content
            rows = {row["name"]: row for row in listed.json()["results"]}
            assert (rows["lost"]["secrets_unreadable"], rows["lost"]["secrets_set"]) == (True, None)
            assert (rows["fine"]["secrets_unreadable"], rows["fine"]["secrets_set"]) == (False, ["token"])
            assert client.get("/api/connections/lost/").json()["secrets_unreadable"] is True
            for path in ("/connections/", f"/connections/teams/{team.slug}/", "/connections/lost/"):
                page = client.get(path)
                assert page.status_code == 200 and unreadable in _text(page), (person, path)

        admin = APIClient()
        admin.force_login(admin_user_role)
        form_page = admin.get("/connections/lost/").content.decode()
        assert "Cannot be read" in form_page and "re-enter them (or restore the key)" in form_page
        stored_test = admin.post("/connections/lost/test/", {}, HTTP_HX_REQUEST="true")
        assert stored_test.status_code == 200 and "Not tested: the stored secrets cannot be read" in _text(stored_test)
        with pytest.raises(ConnectionUnavailable, match='The secrets of the connection "lost" cannot be read'):
            connection_for_step("lost", kind="http", workflow_id=workflow.pk)

        form = {
            "label": "Lost (re-entered)",
            "team": str(team.pk),
            "config_base_url": f"{api.url}/api/",
            "config_timeout_seconds": "10",
            "config_auth": "bearer",
            "config_token_auth_method": "client_secret_basic",
            "secret_token": "",
        }
        refused = admin.post("/connections/lost/", form)
        assert refused.status_code == 400
        assert "The stored one cannot be read with the server's keys: enter it again." in _text(refused)
        assert _raw_secrets(lost) == raw and Connection.objects.get(name="lost").label == "LOST"

        saved = admin.post("/connections/lost/", {**form, "secret_token": "tok-new-5678"})
        assert saved.status_code == 302, saved.content.decode()
        again = Connection.objects.get(name="lost")
        assert again.secrets == {"token": "tok-new-5678"} and again.label == "Lost (re-entered)"
        assert api.requests[-1].headers["authorization"] == "Bearer tok-new-5678"
        assert connection_for_step("lost", kind="http", workflow_id=workflow.pk).secrets == {"token": "tok-new-5678"}
        assert admin.get("/api/connections/lost/").json()["secrets_set"] == ["token"]
