"""S6 for the connectors that are not HTTP (review M4): an SMTP, SQL, IMAP or MCP connection reaches an address
that is not on the public internet, or a port that is not its protocol's own, only when an administrator named it
in the connection's allowlist (or in AIOS_HTTP_ALLOWLIST, for every connection).

A real listener on 127.0.0.2 (loopback, refused by default) counts the connections it accepts: each kind's
connection test (the same connect path its steps and the mailbox poll use) must not reach it until the
connection's allowlist names the address, and then must.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from apps.connectors.services import connection_test, connection_update
from apps.core import http
from tests.connectors.helpers import make_connection
from tests.security.test_s6_ssrf import Listener

pytestmark = pytest.mark.django_db

BLOCKED = "127.0.0.2"


@pytest.fixture
def listener() -> Iterator[Listener]:
    import socket

    sink = Listener(socket.AF_INET, BLOCKED)
    yield sink
    sink.close()


def _config(kind: str, port: int) -> dict[str, Any]:
    return {
        "smtp": {"host": BLOCKED, "port": port, "security": "none", "from_address": "billing@example.com"},
        "sql": {"host": BLOCKED, "port": port, "database": "erp", "username": "reader"},
        "mailbox": {"host": BLOCKED, "port": port, "ssl": False, "username": "inbox@example.com"},
        "mcp": {"transport": "http", "url": f"http://{BLOCKED}:{port}/mcp"},
    }[kind]


@pytest.mark.parametrize("kind", ["smtp", "sql", "mailbox", "mcp"])
def test_a_connector_reaches_a_blocked_address_only_through_its_allowlist(settings, team, listener, kind):
    settings.AIOS_HTTP_ALLOWLIST = []
    settings.AIOS_HTTP_ALLOWED_PORTS = []
    secrets: dict[str, str | None] = {"password": "pw-1234"} if kind in ("sql", "mailbox") else {}
    connection = make_connection(
        team, name=f"internal-{kind}", kind=kind, config=_config(kind, listener.port), secrets=secrets
    )

    result = connection_test(actor=None, connection=connection)
    assert not result.ok and "a loopback address" in result.message, result.message
    # A host name entry limits where the connection goes but never admits a private address; another
    # connection's allowlist does not help this one.
    connection_update(actor=None, connection=connection, allowed_hosts=["localhost"], allowed_ports=[])
    connection.refresh_from_db()
    assert not connection_test(actor=None, connection=connection).ok
    other = make_connection(team, name=f"other-{kind}", kind=kind, config=_config(kind, listener.port))
    connection_update(actor=None, connection=other, allowed_hosts=[f"{BLOCKED}/32"], allowed_ports=[])
    assert not connection_test(actor=None, connection=connection).ok
    assert listener.accepted == []

    connection_update(actor=None, connection=connection, allowed_hosts=[BLOCKED], allowed_ports=[])
    connection.refresh_from_db()
    result = connection_test(actor=None, connection=connection)
    # The listener speaks no protocol, so the test fails, but only after it connected.
    assert listener.accepted, result.message  # (the MCP client may try twice)
    assert "loopback" not in result.message and "not allowed" not in result.message


@pytest.mark.parametrize(
    ("default_ports", "port"),
    [({25, 465, 587}, 2525), ({143, 993}, 1143), ({5432}, 3306), ({3306}, 5432), (None, 8080)],
)
def test_a_public_address_on_another_port_needs_the_connections_ports(settings, default_ports, port):
    """Refused before any connection (this test has no internet: a connection let through would fail as
    unreachable, with another message); the kind's own ports pass; the connection's ports widen them."""
    settings.AIOS_HTTP_ALLOWLIST = []
    settings.AIOS_HTTP_ALLOWED_PORTS = []
    public = "93.184.215.14"
    with pytest.raises(http.OutboundError, match=f"port {port} is not allowed"):
        http.connection_address(public, port, default_ports=default_ports)
    for own in default_ports or (80, 443):
        assert http.port_refusal(own, public, default_ports=default_ports) is None
    destinations, problems = http.destinations_parse([], [str(port)])
    assert not problems
    assert http.connection_address(public, port, default_ports=default_ports, destinations=destinations) == public
    # AIOS_HTTP_ALLOWED_PORTS is HTTP's (and MCP's, which speaks HTTP): it does not open a port for SMTP or SQL.
    settings.AIOS_HTTP_ALLOWED_PORTS = [port]
    assert (http.port_refusal(port, public, default_ports=default_ports) is None) == (default_ports is None)
