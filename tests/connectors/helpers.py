"""Shared pieces of the connection tests: connections made through the real services, and the switch that lets
this test reach loopback servers (the outbound address policy refuses them by default)."""

from __future__ import annotations

import socket
from typing import Any

from apps.accounts.models import Team
from apps.connectors.models import Connection
from apps.connectors.services import connection_create


def allow_loopback(settings: Any) -> None:
    """Outbound connections to 127.0.0.1 and ::1 are allowed for this test (an administrator's allowlist)."""
    settings.AIOS_HTTP_ALLOWLIST = ["127.0.0.1/32", "::1/128"]


def make_connection(
    team: Team,
    *,
    name: str = "erp",
    kind: str = "http",
    config: dict[str, Any] | None = None,
    secrets: dict[str, str | None] | None = None,
    actor: Any = None,
    label: str = "",
) -> Connection:
    """A connection made by the service (as the system when `actor` is None)."""
    defaults: dict[str, dict[str, Any]] = {
        "http": {"base_url": "https://erp.example.com/api/"},
        "smtp": {"host": "smtp.example.com", "from_address": "billing@example.com"},
        "sql": {"host": "db.example.com", "database": "erp", "username": "reader"},
        "mailbox": {"host": "imap.example.com", "username": "inbox@example.com"},
    }
    return connection_create(
        actor=actor,
        name=name,
        label=label or name.upper(),
        kind=kind,
        team=team,
        config=config if config is not None else defaults[kind],
        secrets=secrets if secrets is not None else ({"password": "pw-1234"} if kind == "mailbox" else {}),
        description=f"The {name} connection",
    )


def finance_team(*members: Any) -> Team:
    """A second team ("Finance"), with `members`."""
    from apps.accounts.services import team_create

    return team_create(name="Finance", members=list(members))


def own_addresses() -> list[str]:
    """This machine's addresses other than loopback (they reach the listener on `::` too)."""
    found: set[str] = set()
    try:
        import fcntl  # noqa: F401 - only to know we are on a POSIX host with interfaces to ask about

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.200", 9))  # no packet is sent for a UDP connect; it picks the source address
            found.add(probe.getsockname()[0])
    except OSError:
        pass
    for info in socket.getaddrinfo(socket.gethostname(), None):
        found.add(str(info[4][0]))
    return sorted(address for address in found if not address.startswith("127.") and address != "::1")
