"""Testing a connection for real, per kind, with a short timeout, answering with the server's own reason:

- http: GET the base URL (or the test path) with the authentication applied, an OAuth2 token fetched first;
- smtp: connect, EHLO, STARTTLS or TLS, AUTH when there is a user name, QUIT (apps.connectors.smtp);
- sql: connect, SELECT 1 in a read-only transaction, the server's version (apps.connectors.sql);
- mailbox: IMAP login, select the folder, logout;
- mcp: open a session (Streamable HTTP or the stdio program) and list the server's tools (apps.connectors.mcp).

Hosts pass the same address policy as outbound HTTP (loopback and private addresses refused unless
allowlisted in AIOS_HTTP_ALLOWLIST), and the connection goes to exactly the address that was checked. Nothing
here writes to the database; `apps.connectors.services` records and audits the outcome.
"""

from __future__ import annotations

import contextlib
import imaplib
import time
from dataclasses import dataclass
from typing import Any

from apps.connectors import imap, kinds
from apps.connectors.runtime import (
    ConnectionFailed,
    ResolvedConnection,
    http_auth_headers,
    join_url,
    redact,
    secret_needles,
)
from apps.core import http
from apps.core.exceptions import ApplicationError

TEST_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class ProbeResult:
    """The outcome of a test: `ok`, a sentence for people (the server's reason on failure), and how long
    it took. Never holds a secret."""

    ok: bool
    message: str
    seconds: float = 0.0
    # What the server offers, as (name, description) pairs: an MCP server's tools, listed on the test's result.
    tools: tuple[tuple[str, str], ...] = ()


def probe(
    kind: str, config: dict[str, Any], secrets: dict[str, str], *, destinations: http.Destinations | None = None
) -> ProbeResult:
    """Test settings `config` with `secrets` for a connection of `kind` (HTTP requests within `destinations`,
    the connection's allowlists); never raises for a failed attempt."""
    started = time.monotonic()
    resolved = ResolvedConnection(name="(test)", kind=kind, config=config, secrets=secrets)
    tools: list[tuple[str, str]] = []
    try:
        valid = kinds.settings_validate(kind, config)
        resolved = ResolvedConnection(
            name="(test)", kind=kind, config=valid, secrets=secrets, destinations=destinations
        )
        if kind == kinds.MCP:
            message, tools = _mcp(resolved)
        else:
            message = {"http": _http, "smtp": _smtp, "sql": _sql, "mailbox": _mailbox}[kind](resolved)
        ok = True
    except ApplicationError as error:
        ok, message = False, error.message
    except Exception as error:  # a test reports every failure as a reason, never as a crash
        ok, message = False, f"{type(error).__name__}: {error}"
    message = redact(message, secret_needles(resolved))
    return ProbeResult(
        ok=ok,
        message=str(message)[:2000],
        seconds=round(time.monotonic() - started, 3),
        tools=tuple(
            (str(redact(name, secret_needles(resolved))), str(redact(text, secret_needles(resolved))))
            for name, text in tools
        )
        if ok
        else (),
    )


def _http(resolved: ResolvedConnection) -> str:
    config = resolved.config
    url = join_url(str(config["base_url"]), str(config.get("test_path") or ""))
    try:
        headers = http.merge_headers(config.get("headers", {}), http_auth_headers(resolved))
    except ConnectionFailed as error:
        raise ApplicationError(error.message) from None
    timeout = min(float(config.get("timeout_seconds", 30)), TEST_TIMEOUT_SECONDS)
    try:
        response = http.request("GET", url, headers=headers, timeout=timeout, destinations=resolved.destinations)
    except http.OutboundError as error:
        raise ApplicationError(str(error)) from None
    if response.status >= 400:
        # Redacted before it is cut short: a cut through a secret would leave a piece no search finds.
        reason = redact(response.text(), secret_needles(resolved, headers))[:300].strip()
        raise ApplicationError(f"GET {url} answered HTTP {response.status}: {reason or '(no body)'}")
    token_note = " with a fresh OAuth2 token" if config.get("auth") == "oauth2_client_credentials" else ""
    return f"GET {url}{token_note} answered HTTP {response.status}."


def _mcp(resolved: ResolvedConnection) -> tuple[str, list[tuple[str, str]]]:
    from apps.connectors import mcp

    try:
        listed = mcp.mcp_tools_list(resolved, timeout=TEST_TIMEOUT_SECONDS)
    except (mcp.McpUnavailable, mcp.McpToolError) as error:
        raise ApplicationError(error.message) from None
    names = ", ".join(tool.name for tool in listed[:20]) + (", …" if len(listed) > 20 else "")
    count = f"{len(listed)} tool{'s' if len(listed) != 1 else ''}"
    message = f"Connected and listed {count}: {names}." if listed else "Connected, but the server offers no tools."
    return message, [(tool.name, tool.description) for tool in listed]


def _sql(resolved: ResolvedConnection) -> str:
    from apps.connectors import sql

    server = sql.sql_test(resolved.config, resolved.secrets, destinations=resolved.destinations)
    return f"Connected and ran SELECT 1: {server}."


def _smtp(resolved: ResolvedConnection) -> str:
    from apps.connectors import smtp

    server = smtp.smtp_test(resolved.config, resolved.secrets, destinations=resolved.destinations)
    signed_in = ", signed in" if resolved.config.get("username") else ""
    return f"Connected, greeted{signed_in} and said goodbye: {server}."


def _mailbox(resolved: ResolvedConnection) -> str:
    config, password = resolved.config, resolved.secrets.get("password", "")
    host, port = str(config["host"]), int(config["port"])
    folder = str(config.get("folder") or "INBOX")
    quoted = imap.imap_quote(folder)
    address = imap.imap_address(host, port, resolved.destinations)
    client = imap.imap_connect(host, address, port, ssl_on=bool(config.get("ssl", True)), timeout=TEST_TIMEOUT_SECONDS)
    try:
        try:
            client.login(str(config["username"]), password)
        except imaplib.IMAP4.error as error:
            raise ApplicationError(f"The server refused the login: {imap.imap_reason(error)}") from None
        status, data = client.select(quoted, readonly=True)
        if status != "OK":
            raise ApplicationError(f'The server refused the folder "{folder}": {imap.imap_reason_data(data, status)}')
        count = data[0].decode() if data and isinstance(data[0], bytes) else "?"
        return f'Signed in to {host} and opened "{folder}" ({count} messages).'
    except (OSError, imaplib.IMAP4.abort) as error:
        raise ApplicationError(f"{host}:{port} closed the IMAP session ({imap.imap_reason(error)}).") from None
    finally:
        # The outcome is known: a failed goodbye changes nothing.
        with contextlib.suppress(Exception):
            client.logout()
