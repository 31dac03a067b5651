"""Testing a connection for real, per kind, against real servers on loopback: the HTTP API (with OAuth2), an
aiosmtpd server that requires AUTH, the machine's MariaDB and the test PostgreSQL, and an IMAP4rev1 server.
Failures carry the server's own reason and never a secret; the outbound address policy applies to every kind."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from apps.audit.models import AuditEvent
from apps.connectors.models import Connection
from apps.connectors.probes import probe
from apps.connectors.services import connection_test
from tests.connectors.helpers import allow_loopback, make_connection, own_addresses
from tests.connectors.servers import ApiServer
from tests.support.erp import erp_mariadb, erp_postgresql  # noqa: F401 (fixtures)
from tests.support.imap import ImapServer
from tests.support.processes import free_port


class _Accept:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"


@pytest.fixture
def smtp_with_auth() -> Iterator[int]:
    """An aiosmtpd server on loopback that requires AUTH (PLAIN or LOGIN) from "mailer" / "smtp-pw-0001"."""

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
            b"mailer",
            b"smtp-pw-0001",
        )
        return AuthResult(success=ok, handled=False)

    controller = Controller(
        _Accept(),
        hostname="127.0.0.1",
        port=free_port(),
        authenticator=authenticator,
        auth_require_tls=False,
        auth_required=True,
    )
    controller.start()
    try:
        yield controller.port
    finally:
        controller.stop()


def test_http_probe_gets_the_base_url_with_auth_and_reports_the_answer(settings):
    allow_loopback(settings)
    with ApiServer(static_tokens={"tok-probe-0001"}) as api:
        config = {"base_url": f"{api.url}/api/", "test_path": "health", "auth": "bearer"}
        ok = probe("http", config, {"token": "tok-probe-0001"})
        assert ok.ok and ok.message == f"GET {api.url}/api/health answered HTTP 200."
        assert api.requests[-1].headers["authorization"] == "Bearer tok-probe-0001"
        refused = probe("http", config, {"token": "tok-wrong-0002"})
        assert not refused.ok and "answered HTTP 401" in refused.message and '"unauthorised"' in refused.message
        assert "tok-wrong" not in refused.message


def test_http_probe_fetches_an_oauth2_token_first(settings):
    allow_loopback(settings)
    with ApiServer(clients={"aios": "cs-probe-0003"}) as api:
        config = {
            "base_url": api.url,
            "auth": "oauth2_client_credentials",
            "token_url": f"{api.url}/oauth/token",
            "client_id": "aios",
        }
        result = probe("http", config, {"client_secret": "cs-probe-0003"})
        assert result.ok and "fresh OAuth2 token" in result.message
        assert len(api.token_requests) == 1
        bad = probe("http", config, {"client_secret": "cs-bad-0004"})
        assert not bad.ok and "invalid_client" in bad.message and "cs-bad" not in bad.message


def test_every_kind_refuses_loopback_unless_allowlisted(settings):
    settings.AIOS_HTTP_ALLOWLIST = []
    cases = {
        "http": ({"base_url": "http://127.0.0.1:9/"}, {}),
        "smtp": ({"host": "127.0.0.1", "port": 25, "from_address": "a@example.com", "security": "none"}, {}),
        "sql": ({"host": "127.0.0.1", "database": "x", "username": "u", "dialect": "mysql"}, {}),
        "mailbox": ({"host": "127.0.0.1", "username": "u", "ssl": False, "port": 143}, {"password": "pw-0005"}),
    }
    for kind, (config, secrets) in cases.items():
        result = probe(kind, config, secrets)
        assert not result.ok and "a loopback address" in result.message, (kind, result.message)


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_smtp_probe_signs_in_and_reports_a_refused_password(settings, smtp_with_auth):
    allow_loopback(settings)
    config = {
        "host": "127.0.0.1",
        "port": smtp_with_auth,
        "security": "none",
        "username": "mailer",
        "from_address": "billing@example.com",
    }
    ok = probe("smtp", config, {"password": "smtp-pw-0001"})
    assert ok.ok, ok.message
    assert "signed in" in ok.message
    refused = probe("smtp", config, {"password": "smtp-wrong-0002"})
    assert not refused.ok and "535" in refused.message and "smtp-wrong" not in refused.message


@pytest.mark.parametrize("fixture", ["erp_mariadb", "erp_postgresql"])
def test_sql_probe_connects_and_names_the_server(request, settings, fixture):
    allow_loopback(settings)
    database = request.getfixturevalue(fixture)
    result = probe("sql", dict(database.config), dict(database.secrets))
    assert result.ok, result.message
    assert ("MariaDB" if fixture == "erp_mariadb" else "PostgreSQL") in result.message
    wrong = probe("sql", {**database.config, "database": "no_such_database_here"}, dict(database.secrets))
    assert not wrong.ok and "no_such_database_here" in wrong.message


def test_mailbox_probe_logs_in_and_selects_the_folder(settings):
    allow_loopback(settings)
    with ImapServer(users={"inbox@example.com": "imap-pw-0001"}, folders={"INBOX": 3, "Invoices": 0}) as server:
        config = {"host": "127.0.0.1", "port": server.port, "ssl": False, "username": "inbox@example.com"}
        ok = probe("mailbox", config, {"password": "imap-pw-0001"})
        assert ok.ok and ok.message == 'Signed in to 127.0.0.1 and opened "INBOX" (3 messages).'
        refused = probe("mailbox", config, {"password": "imap-wrong-0002"})
        assert not refused.ok and "AUTHENTICATIONFAILED" in refused.message and "imap-wrong" not in refused.message
        missing = probe("mailbox", {**config, "folder": "Archive"}, {"password": "imap-pw-0001"})
        assert not missing.ok and "Mailbox doesn't exist: Archive" in missing.message
        assert server.logins == [("inbox@example.com", True), ("inbox@example.com", False), ("inbox@example.com", True)]


def test_a_mailbox_without_tls_is_reached_only_on_this_machine(settings):
    """Every IMAP session signs in with the password: without TLS it would cross the network in clear text, so only
    a loopback address is reached that way (the SMTP rule). The server listens on every address; reached through
    one that is not loopback, even an allowed one, it receives nothing at all."""
    [address, *_] = [address for address in own_addresses() if ":" not in address] or [""]
    assert address, "the machine needs an IPv4 address besides loopback"
    settings.AIOS_HTTP_ALLOWLIST = ["127.0.0.1/32", f"{address}/32"]
    users = {"inbox@example.com": "imap-pw-0001"}
    with ImapServer(users=users, host="0.0.0.0") as server:
        config = {"host": address, "port": server.port, "ssl": False, "username": "inbox@example.com"}
        refused = probe("mailbox", config, {"password": "imap-pw-0001"})
        assert not refused.ok and refused.message == (
            f"The mailbox at {address} would receive its password unencrypted: turn on TLS from the start (IMAPS, "
            "usually port 993). Without TLS only a mail server on this machine is reached."
        )
        assert server.commands == [] and server.logins == []
        loopback = probe("mailbox", {**config, "host": "127.0.0.1"}, {"password": "imap-pw-0001"})
        assert loopback.ok, loopback.message
        assert server.logins == [("inbox@example.com", True)]


@pytest.mark.django_db
def test_a_stored_connection_test_is_recorded_and_audited(settings, admin_user_role, team):
    allow_loopback(settings)
    with ImapServer(users={"inbox@example.com": "imap-pw-0001"}) as server:
        connection = make_connection(
            team,
            name="inbox",
            kind="mailbox",
            config={"host": "127.0.0.1", "port": server.port, "ssl": False, "username": "inbox@example.com"},
            secrets={"password": "imap-pw-0001"},
        )
        result = connection_test(actor=admin_user_role, connection=connection)
    assert result.ok
    stored = Connection.objects.get(pk=connection.pk)
    assert stored.last_test_ok is True and stored.last_tested_at is not None and "opened" in stored.last_test_message
    event = AuditEvent.objects.get(verb="connection.tested", target_id=str(connection.pk))
    assert json.loads(event.data)["ok"] is True and "imap-pw" not in event.data
