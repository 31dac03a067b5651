"""The one door for outbound HTTP from steps and connectors: timeouts, an SSRF guard, no redirects,
redacted logging.

The guard resolves the host once, refuses loopback, private, link-local, multicast, reserved and
metadata addresses unless an administrator allowlisted them (AIOS_HTTP_ALLOWLIST, CIDRs), and then
connects to exactly the address it checked (pinning), so DNS cannot be switched between check and use.
Redirects are never followed: a 3xx is returned to the caller as it is.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import socket
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings

logger = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 5 * 1024 * 1024


class OutboundError(Exception):
    """A request that was refused or failed before a response arrived; `uncertain` is True when the
    request may have reached the other side (so a side effect may have happened)."""

    def __init__(self, message: str, *, uncertain: bool = False) -> None:
        super().__init__(message, uncertain)
        self.message = message
        self.uncertain = uncertain

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class OutboundResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


def _allowlist() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(item, strict=False) for item in settings.AIOS_HTTP_ALLOWLIST]


def address_refusal(address: str) -> str | None:
    """Why `address` may not be contacted, or None when it may."""
    ip = ipaddress.ip_address(address)
    if any(ip in network for network in _allowlist()):
        return None
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address (cloud metadata lives there)"
    if ip.is_private:
        return "a private network address"
    if ip.is_multicast or ip.is_reserved or ip.is_unspecified:
        return "a reserved address"
    return None


def _resolve(host: str, port: int) -> str:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise OutboundError(f'The host "{host}" could not be resolved ({error.strerror}).') from None
    addresses = [str(info[4][0]) for info in infos]
    for address in addresses:
        refusal = address_refusal(address)
        if refusal:
            raise OutboundError(f'"{host}" resolves to {address}, {refusal}; requests there are not allowed.')
    return addresses[0]


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """Connects to the checked address while verifying the certificate for the original host name."""

    def __init__(self, address: str, hostname: str, **kwargs: Any) -> None:
        super().__init__(address, **kwargs)
        self._hostname = hostname

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        context = ssl.create_default_context()
        self.sock = context.wrap_socket(sock, server_hostname=self._hostname)


def request(
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 30.0,
) -> OutboundResponse:
    """Send one request through the guard. Raises OutboundError before sending (refused, unresolvable,
    unreachable: certain nothing happened) or after (a timeout or a dropped connection: uncertain)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OutboundError(f"Only http:// and https:// URLs can be called (got {url[:200]!r}).")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    address = _resolve(parts.hostname, port)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        connection = _PinnedHTTPSConnection(address, parts.hostname, port=port, timeout=timeout)
    else:
        connection = http.client.HTTPConnection(address, port=port, timeout=timeout)
    host_header = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    all_headers = {"Host": host_header, "User-Agent": "AIOS", **(headers or {})}
    try:
        connection.connect()
    except OSError as error:
        raise OutboundError(f"{parts.hostname}:{port} is not reachable ({error.strerror or error}).") from None
    try:
        connection.request(method.upper(), path, body=body, headers=all_headers)
        response = connection.getresponse()
        data = response.read(MAX_RESPONSE_BYTES + 1)
    except (TimeoutError, OSError, http.client.HTTPException) as error:
        # The request may have been received and acted on: the caller must treat the effect as uncertain.
        raise OutboundError(
            f"{parts.hostname}:{port} did not answer completely ({type(error).__name__}).", uncertain=True
        ) from None
    finally:
        connection.close()
    if len(data) > MAX_RESPONSE_BYTES:
        raise OutboundError(f"The response from {parts.hostname} is larger than {MAX_RESPONSE_BYTES} bytes.")
    logger.info("outbound %s %s://%s%s -> %s", method.upper(), parts.scheme, host_header, parts.path, response.status)
    return OutboundResponse(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
