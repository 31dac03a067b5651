"""IMAP client helpers for mailbox connections, shared by the connection test and the mailbox poll: the
address check, a client connected to exactly the checked address, folder quoting and the server's reason.

The host is resolved once and every address it resolves to must pass the outbound policy
(apps.core.http.connection_address: a public address on port 143 or 993, or one the connection's
administrator allowed); the client then connects to that address, so DNS cannot be switched between
check and use. Over TLS the certificate is verified for the host's name, not the address. Without TLS (a mailbox
with `ssl` off) the password would cross the network in clear text, so only a loopback address is reached that way,
as for a signed-in SMTP connection (apps.connectors.smtp).
"""

from __future__ import annotations

import imaplib
import ipaddress
import re
import socket
import ssl
from typing import Any

from apps.core import http
from apps.core.exceptions import ApplicationError

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class MailboxAddressRefused(ApplicationError):
    """The mailbox's host may not be contacted (the outbound address policy) or does not resolve; nothing was
    sent."""


class MailboxUnreachable(ApplicationError):
    """No IMAP session could be opened (refused, timed out, TLS failed); the message says why."""


class PinnedIMAP4(imaplib.IMAP4):
    """IMAP over plain TCP to an address already checked against the outbound policy."""


class PinnedIMAP4SSL(imaplib.IMAP4_SSL):
    """IMAP over TLS to the checked address, verifying the certificate for the host's name (connecting by name
    would resolve it again, perhaps elsewhere)."""

    def __init__(self, hostname: str, address: str, port: int, timeout: float) -> None:
        self._address = address
        super().__init__(hostname, port, ssl_context=ssl.create_default_context(), timeout=timeout)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        sock = socket.create_connection((self._address, self.port), timeout)
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


IMAP_PORTS = frozenset({143, 993})


def imap_address(host: str, port: int, destinations: http.Destinations | None = None) -> str:
    """The checked address to connect to for `host` (within the connection's allowlists, `destinations`);
    MailboxAddressRefused with the reason otherwise."""
    try:
        return http.connection_address(host, port, default_ports=IMAP_PORTS, destinations=destinations)
    except http.OutboundError as error:
        raise MailboxAddressRefused(error.message) from None


def imap_connect(host: str, address: str, port: int, *, ssl_on: bool, timeout: float) -> imaplib.IMAP4:
    """An IMAP session to `address` (checked by `imap_address`) for `host`, TLS from the start when `ssl_on`.
    Raises MailboxUnreachable with the reason, or MailboxAddressRefused, before connecting, when the session would
    be in clear text to anything but this machine (every IMAP session signs in with the password)."""
    if not ssl_on and not ipaddress.ip_address(address).is_loopback:
        raise MailboxAddressRefused(plaintext_refusal(host))
    try:
        if ssl_on:
            return PinnedIMAP4SSL(host, address, port, timeout)
        return PinnedIMAP4(address, port, timeout=timeout)
    except (OSError, imaplib.IMAP4.error) as error:
        raise MailboxUnreachable(f"{host}:{port} is not reachable over IMAP ({imap_reason(error)}).") from None


def plaintext_refusal(host: str) -> str:
    """Why a mailbox without TLS is not reached at `host` (a server other than this machine)."""
    return (
        f"The mailbox at {host} would receive its password unencrypted: turn on TLS from the start (IMAPS, usually "
        "port 993). Without TLS only a mail server on this machine is reached."
    )


def imap_quote(folder: str) -> str:
    """A folder name as an IMAP quoted string (RFC 3501 section 4.3). A quoted string cannot hold a line break
    or a control character (one would end the command and start another): ApplicationError."""
    if _CONTROL.search(folder):
        raise ApplicationError("A folder name cannot contain a line break or control character.")
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


def imap_reason(error: BaseException) -> str:
    """What the server (or the socket) said, as text."""
    text = error.args[0] if error.args else error
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return str(text) or type(error).__name__


def imap_reason_data(data: list[Any], status: str) -> str:
    """The server's words in a tagged answer's data, else its status."""
    last = data[-1] if data else None
    return last.decode("utf-8", errors="replace") if isinstance(last, bytes) else status
