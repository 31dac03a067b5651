"""The one door for outbound HTTP from steps and connectors: timeouts, an SSRF guard, no redirects,
redacted logging.

The guard resolves the host once and allows only public internet addresses (judged on the IPv4 address an
IPv4-mapped, 6to4, NAT64 or Teredo IPv6 address carries), unless an administrator allowlisted them
(AIOS_HTTP_ALLOWLIST for every caller, or a connection's own `Destinations`); then it connects to exactly the
address it checked (pinning), so DNS cannot be switched between check and use. HTTP goes to ports 80 and 443
only, unless an administrator allowed another port (AIOS_HTTP_ALLOWED_PORTS, a connection's ports, or an
allowlisted network). Redirects are never followed: a 3xx is returned to the caller as it is.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import re
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
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


# IPv6 ranges that carry or reach another network: not public destinations in themselves. 6to4 (2002::/16) and
# the well-known NAT64 prefix (64:ff9b::/96) wrap an IPv4 address and are judged by it (see `_unwrapped`).
_NOT_PUBLIC_V6 = [
    ipaddress.ip_network("64:ff9b:1::/48"),  # local-use NAT64 (RFC 8215)
    ipaddress.ip_network("fec0::/10"),  # site-local (deprecated, still routed inside some networks)
]
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _unwrapped(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The IPv4 address an IPv6 address carries and reaches (IPv4-mapped, 6to4, NAT64, Teredo's client), else
    `ip` itself: a packet to 2002:a9fe:a9fe:: or 64:ff9b::a9fe:a9fe ends up at 169.254.169.254."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.sixtofour is not None:
            return ip.sixtofour
        if ip.teredo is not None:
            return ip.teredo[1]
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


DEFAULT_PORTS = frozenset({80, 443})


@dataclass(frozen=True)
class Destinations:
    """Where one connection may go, as its administrator set it (`Connection.allowed_hosts` / `allowed_ports`).

    `hosts`: host names (lower case; "*.example.com" also matches every name under it). `networks`: CIDRs whose
    addresses the connection may reach although they are not public (an ERP on 10.1.2.3), at any port. When
    either is given, the connection reaches only those hosts and networks. `ports`: ports besides 80 and 443.
    A host name entry limits where the connection goes; it never admits a non-public address (a name can be
    made to resolve anywhere), only a network entry does."""

    hosts: tuple[str, ...] = ()
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    ports: frozenset[int] = field(default_factory=frozenset)

    @property
    def restricts(self) -> bool:
        return bool(self.hosts or self.networks)

    def names_host(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return any(host == entry or (entry.startswith("*.") and host.endswith(entry[1:])) for entry in self.hosts)

    def covers(self, address: str) -> bool:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        return any(candidate in network for candidate in {ip, _unwrapped(ip)} for network in self.networks)


_HOST_ENTRY = re.compile(r"^(\*\.)?([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$")
MAX_DESTINATION_ENTRIES = 50


def destinations_parse(hosts: Iterable[str], ports: Iterable[int | str]) -> tuple[Destinations, dict[str, list[str]]]:
    """A connection's allowlists from what an administrator entered: host names ("erp.example.com",
    "*.example.com") and CIDRs or addresses ("10.1.2.0/24", "fd00::5") in `hosts`, port numbers in `ports`.
    Returns the Destinations and the problems per field ("allowed_hosts", "allowed_ports"), in words."""
    names: list[str] = []
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    problems: dict[str, list[str]] = {}
    host_list = [str(entry).strip() for entry in hosts if str(entry).strip()]
    port_list = [str(entry).strip() for entry in ports if str(entry).strip()]
    if len(host_list) > MAX_DESTINATION_ENTRIES or len(port_list) > MAX_DESTINATION_ENTRIES:
        problems.setdefault("allowed_hosts", []).append(f"At most {MAX_DESTINATION_ENTRIES} entries each.")
    for entry in host_list[:MAX_DESTINATION_ENTRIES]:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
            continue
        except ValueError:
            pass
        lowered = entry.lower().rstrip(".")
        if len(lowered) <= 253 and _HOST_ENTRY.match(lowered):
            names.append(lowered)
        else:
            problems.setdefault("allowed_hosts", []).append(
                f'"{entry[:100]}" is neither a host name (erp.example.com, *.example.com) nor an address or '
                "network (10.1.2.3, 10.1.2.0/24)."
            )
    port_numbers: set[int] = set()
    for entry in port_list[:MAX_DESTINATION_ENTRIES]:
        if entry.isdigit() and 1 <= int(entry) <= 65535:
            port_numbers.add(int(entry))
        else:
            problems.setdefault("allowed_ports", []).append(f'"{entry[:20]}" is not a port number (1 to 65535).')
    return Destinations(tuple(names), tuple(networks), frozenset(port_numbers)), problems


def port_refusal(
    port: int, address: str, destinations: Destinations | None = None, *, default_ports: Iterable[int] | None = None
) -> str | None:
    """Why a connection may not go to `port` at `address`, or None. HTTP (`default_ports` None): 80 and 443 always
    may, other ports when an administrator allowed them (AIOS_HTTP_ALLOWED_PORTS, the connection's ports). Other
    kinds (SMTP, SQL, IMAP) name their protocol's `default_ports`; AIOS_HTTP_ALLOWED_PORTS, being HTTP's, does
    not widen them. For every kind an allowlisted network of the address (AIOS_HTTP_ALLOWLIST, the connection's
    networks: an internal service on its own port) allows any port."""
    allowed = DEFAULT_PORTS if default_ports is None else frozenset(default_ports)
    if port in allowed or (default_ports is None and port in settings.AIOS_HTTP_ALLOWED_PORTS):
        return None
    if destinations is not None and (port in destinations.ports or destinations.covers(address)):
        return None
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if any(candidate in network for candidate in {ip, _unwrapped(ip)} for network in _allowlist()):
        return None
    numbers = [str(number) for number in sorted(allowed)]
    named = ", ".join(numbers[:-1]) + " and " + numbers[-1] if len(numbers) > 1 else "".join(numbers)
    return f"port {port} is not allowed (only {named} are; an administrator can allow another port for a connection)"


def address_refusal(address: str) -> str | None:
    """Why `address` may not be contacted, or None when it may: only public internet addresses are allowed
    (`is_global`, judged on the IPv4 address an IPv6 one wraps), unless an administrator allowlisted the
    address (AIOS_HTTP_ALLOWLIST)."""
    original = ipaddress.ip_address(address.split("%", 1)[0])
    ip = _unwrapped(original)
    allowlist = _allowlist()
    if any(candidate in network for candidate in {original, ip} for network in allowlist):
        return None
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address (cloud metadata lives there)"
    if ip.is_private:
        return "a private network address"
    if ip.is_multicast or ip.is_reserved or ip.is_unspecified:
        return "a reserved address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in ipaddress.ip_network("100.64.0.0/10"):
        return "a shared (carrier-grade NAT) address (some cloud metadata lives there)"
    if isinstance(ip, ipaddress.IPv4Address) and ip in ipaddress.ip_network("192.0.0.0/24"):
        # Protocol assignments (RFC 6890); Python releases disagree on which of them are "global", and some
        # clouds have served metadata from this block.
        return "a protocol-assignment address that is not on the public internet"
    if not ip.is_global or (isinstance(ip, ipaddress.IPv6Address) and any(ip in net for net in _NOT_PUBLIC_V6)):
        return "an address that is not on the public internet"
    return None


class HostUnresolved(OutboundError):
    """The host name did not resolve (perhaps for now: DNS answers can come back)."""


def resolve_checked(
    host: str, port: int, *, attempts: str = "connections", destinations: Destinations | None = None
) -> str:
    """The one address to connect to for `host`: every address it resolves to must pass `address_refusal`
    (one bad answer refuses the host, so a DNS server cannot slip a private address in beside a public one),
    or lie in one of the connection's allowed networks (`destinations`); when `destinations` restricts, the host
    must also be one it names or resolve into its networks. The caller connects to exactly this address
    (pinning). Raises OutboundError with the reason; nothing was sent (HostUnresolved when the name did not
    resolve). Used by every connector (HTTP, SMTP, SQL, IMAP); `attempts` names what is refused in the message
    ("connections", "requests")."""
    if not host:
        raise OutboundError("The connection has no host.")
    named = destinations is not None and destinations.names_host(host)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise HostUnresolved(f'The host "{host}" could not be resolved ({error.strerror}).') from None
    except (UnicodeError, ValueError):
        raise OutboundError(f'"{host[:200]}" is not a host name.') from None
    addresses = [str(info[4][0]) for info in infos]
    for address in addresses:
        if destinations is not None and destinations.covers(address):
            continue
        if destinations is not None and destinations.restricts and not named:
            raise OutboundError(
                f'"{host[:200]}" is not among the destinations an administrator allowed for this connection; '
                f"{attempts} there are not allowed."
            )
        refusal = address_refusal(address)
        if refusal:
            raise OutboundError(
                f'"{host}" resolves to {address}, {refusal}; {attempts} there are not allowed '
                "(an administrator can allow it with AIOS_HTTP_ALLOWLIST)."
            )
    return addresses[0]


def connection_address(
    host: str,
    port: int,
    *,
    default_ports: Iterable[int] | None = None,
    destinations: Destinations | None = None,
    attempts: str = "connections",
) -> str:
    """The checked address a connector (SMTP, SQL, IMAP, MCP over HTTP) connects to for `host`:`port`: the host
    passes `resolve_checked` within the connection's `destinations`, and the port is one of the protocol's
    `default_ports` (None: HTTP's) or one an administrator allowed (`port_refusal`). The one guard every
    connector's socket goes through; raises OutboundError (HostUnresolved) with the reason, nothing sent."""
    address = resolve_checked(host, port, attempts=attempts, destinations=destinations)
    refusal = port_refusal(port, address, destinations, default_ports=default_ports)
    if refusal:
        raise OutboundError(f"{host[:200]}:{port}: {refusal}; nothing was sent.")
    return address


# Headers that frame the message or address it: the door sets them from the URL and the body; a caller's would
# let data smuggle a second request or send the connection's credentials under another host's name.
FRAMING_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def merge_headers(*layers: dict[str, str]) -> dict[str, str]:
    """The layers' headers merged by name regardless of case, a later layer winning (so a connection's
    authentication given last replaces an "authorization" a step set); the later layer's spelling is kept."""
    merged: dict[str, tuple[str, str]] = {}
    for layer in layers:
        for name, value in layer.items():
            merged[name.lower()] = (name, value)
    return dict(merged.values())


def _caller_headers(headers: dict[str, str]) -> dict[str, str]:
    """The caller's headers after the checks that keep a request one request: no framing header, no name twice
    (in any case: which one a server reads is its choice), no control character in a value. Raises
    OutboundError naming the header, never its value (it may be a secret)."""
    seen: set[str] = set()
    for name, value in headers.items():
        lowered = name.lower()
        if lowered in FRAMING_HEADERS:
            raise OutboundError(f'The header "{name}" is set by the platform and cannot be given; nothing was sent.')
        if lowered in seen:
            raise OutboundError(f'The header "{name}" is given twice; nothing was sent.')
        seen.add(lowered)
        if _CONTROL.search(str(value)) or _CONTROL.search(name):
            raise OutboundError(
                f'The value of the header "{name[:100]}" has a line break or control character; nothing was sent.'
            )
    if "user-agent" not in seen:
        return {"User-Agent": "AIOS", **headers}
    return dict(headers)


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
    destinations: Destinations | None = None,
) -> OutboundResponse:
    """Send one request through the guard (`destinations`: the connection's allowlists, if any). Raises
    OutboundError before sending (refused, unresolvable, unreachable: certain nothing happened) or after (a
    timeout or a dropped connection: uncertain)."""
    try:
        parts = urlsplit(url)
        explicit_port = parts.port
    except ValueError:
        raise OutboundError(f"{url[:200]!r} is not a URL that can be called.") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OutboundError(f"Only http:// and https:// URLs can be called (got {url[:200]!r}).")
    port = explicit_port or (443 if parts.scheme == "https" else 80)
    address = resolve_checked(parts.hostname, port, attempts="requests", destinations=destinations)
    refusal = port_refusal(port, address, destinations)
    if refusal:
        raise OutboundError(f"{parts.hostname}:{port}: {refusal}; nothing was sent.")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        connection = _PinnedHTTPSConnection(address, parts.hostname, port=port, timeout=timeout)
    else:
        connection = http.client.HTTPConnection(address, port=port, timeout=timeout)
    # An IPv6 literal goes back in brackets (RFC 7230 section 5.4).
    host_name = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    host_header = host_name if explicit_port is None else f"{host_name}:{explicit_port}"
    all_headers = {"Host": host_header, **_caller_headers(headers or {})}
    try:
        connection.connect()
    except OSError as error:
        raise OutboundError(f"{parts.hostname}:{port} is not reachable ({error.strerror or error}).") from None
    try:
        connection.request(method.upper(), path, body=body, headers=all_headers)
        response = connection.getresponse()
        data = response.read(MAX_RESPONSE_BYTES + 1)
    except ValueError:
        # http.client refuses a header or path it cannot send, before anything leaves, with the value in its
        # message; the value may be a secret, so only the kind of problem is told.
        raise OutboundError("The request has a header or path that cannot be sent; nothing was sent.") from None
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
