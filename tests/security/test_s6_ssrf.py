"""S6: server-side request forgery. A corpus of destinations that are not on the public internet, in every
spelling we know (loopback in decimal, octal, hex and short forms, IPv6 and its IPv4-mapped, 6to4, NAT64 and
Teredo wrappings, private, CGNAT, link-local and metadata addresses, this machine's own addresses, names that
resolve to them, and redirects to them), sent through the real `http.request` step, with and without a
connection.

A real listener is bound on every local address at the corpus's port (`::` with IPv4 mapped in, so 127.0.0.1,
127.4.84.1, 0.0.0.0, ::1 and this machine's eth0 addresses all land on it): a request the guard let through would
really connect, and the listener counts it. The port is allowed (AIOS_HTTP_ALLOWED_PORTS) so that only the
address policy stands between the step and the listener. Controls prove the counting works: an allowlisted
address does reach its listener.

Figure: `S6 connections to blocked ranges 0 of N ok`.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from apps.connectors.services import connection_update
from apps.core import http
from apps.steps.base import StepContext, StepError
from apps.steps.registry import step_config_parse, step_type_find
from tests.connectors.helpers import make_connection, own_addresses
from tests.support.figures import record_figure

pytestmark = pytest.mark.django_db


class Listener:
    """A TCP listener that answers any request with 200 and counts the connections it accepted."""

    def __init__(self, family: int, address: str, *, dual_stack: bool = False, answer: bytes = b"") -> None:
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if dual_stack:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.socket.bind((address, 0))
        self.socket.listen(64)
        self.port = self.socket.getsockname()[1]
        self.answer = answer or b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nleak"
        self.accepted: list[str] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                peer, address = self.socket.accept()
            except OSError:
                return
            self.accepted.append(str(address[0]))
            try:
                peer.settimeout(2)
                peer.recv(65536)
                peer.sendall(self.answer)
            except OSError:
                pass
            finally:
                peer.close()

    def close(self) -> None:
        self.socket.close()


@pytest.fixture
def sink() -> Iterator[Listener]:
    listener = Listener(socket.AF_INET6, "::", dual_stack=True)
    yield listener
    listener.close()


@pytest.fixture
def workflow(analyst, team):
    from apps.workflows.services import workflow_create

    return workflow_create(actor=analyst, name="Outbound", team=team)


def run_step(config: dict[str, Any], workflow: Any) -> Any:
    step_type = step_type_find("http.request")
    assert step_type is not None
    context = StepContext(
        run_id=1, step_key="call", input={}, steps={}, idempotency_key="run-1-call", workflow_id=workflow.pk
    )
    return step_type().execute(step_config_parse("http.request", config), context)


def teredo(client: str) -> str:
    """A Teredo address (server 65.54.227.120) whose client, obfuscated as Teredo does, is `client`."""
    obfuscated = int.from_bytes(socket.inet_aton(client), "big") ^ 0xFFFFFFFF
    return f"2001:0:4136:e378:8000:63bf:{obfuscated >> 16:x}:{obfuscated & 0xFFFF:x}"


def host_part(address: str) -> str:
    return f"[{address}]" if ":" in address else address


BLOCKED_HOSTS = [
    # IPv4 loopback, in every spelling inet_aton accepts
    "127.0.0.1",
    "127.1",
    "127.0.1",
    "127.4.84.1",
    "127.255.255.254",
    "2130706433",
    "0x7f000001",
    "0x7f.0.0.1",
    "0x7f.0x0.0x0.0x1",
    "0177.0.0.1",
    "017700000001",
    "0177.0.0.01",
    "127.000.000.001",
    "0",
    "0.0.0.0",
    "0x0",
    # names that resolve to loopback on this machine
    "localhost",
    "LOCALHOST",
    "LocalHost",
    "vm",
    "runsc",
    # IPv6 loopback and its wrappings of 127.0.0.1
    "[::1]",
    "[0:0:0:0:0:0:0:1]",
    "[0000:0000:0000:0000:0000:0000:0000:0001]",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "[0:0:0:0:0:ffff:127.0.0.1]",
    "[::127.0.0.1]",
    "[64:ff9b::127.0.0.1]",
    "[64:ff9b::7f00:1]",
    "[2002:7f00:1::]",
    f"[{teredo('127.0.0.1')}]",
    "[::]",
    "[::ffff:0.0.0.0]",
    # private networks and their wrappings
    "10.0.0.1",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.0.1",
    "[::ffff:10.0.0.1]",
    "[::ffff:192.168.0.1]",
    "[2002:a00:1::]",
    "[64:ff9b::a00:1]",
    f"[{teredo('10.0.0.1')}]",
    "[fd00::1]",
    "[fc00::1]",
    "[fec0::1]",
    # carrier-grade NAT (Alibaba Cloud's metadata service, Tailscale peers)
    "100.64.0.1",
    "100.100.100.200",
    "100.127.255.254",
    "[::ffff:100.100.100.200]",
    "[64:ff9b::6464:64c8]",
    "[2002:6464:64c8::]",
    f"[{teredo('100.100.100.200')}]",
    # link-local and cloud metadata
    "169.254.169.254",
    "0xa9fea9fe",
    "2852039166",
    "0251.0376.0251.0376",
    "169.254.170.2",
    "[::ffff:169.254.169.254]",
    "[::ffff:a9fe:a9fe]",
    "[64:ff9b::a9fe:a9fe]",
    "[2002:a9fe:a9fe::]",
    f"[{teredo('169.254.169.254')}]",
    "[fe80::1]",
    "[fd00:ec2::254]",
    "192.0.0.192",
    # everything else that is not the public internet
    "224.0.0.1",
    "255.255.255.255",
    "192.0.2.1",
    "198.18.0.1",
    "240.0.0.1",
    "[ff02::1]",
    "[2001:db8::1]",
    "[64:ff9b:1::a00:1]",
]


def test_s6_no_request_reaches_a_blocked_range(settings, sink, team, workflow):
    settings.AIOS_HTTP_ALLOWLIST = []
    settings.AIOS_HTTP_ALLOWED_PORTS = [sink.port]
    hosts = BLOCKED_HOSTS + [host_part(address) for address in own_addresses()]
    attempts: list[tuple[str, str]] = []

    # 1. Direct URLs through the step, without a connection.
    for host in hosts:
        with pytest.raises(StepError) as refused:
            run_step({"url": f"http://{host}:{sink.port}/latest/meta-data/", "method": "GET"}, workflow)
        attempts.append((host, str(refused.value)))

    # 2. The same hosts as a connection's base URL (the connector path), and a template choosing the host.
    make_connection(team, name="s6", config={"base_url": "https://erp.example.com/api/"})
    connection = make_connection(team, name="s6-loopback", config={"base_url": f"http://127.0.0.1:{sink.port}/"})
    for host in ["127.0.0.1", "[::1]", "localhost", "2130706433", "[::ffff:127.0.0.1]"]:
        with pytest.raises(StepError) as refused:
            run_step({"connection": "s6-loopback", "url": f"http://{host}:{sink.port}/x"}, workflow)
        attempts.append((f"{host} via connection", str(refused.value)))
    with pytest.raises(StepError) as refused:
        run_step({"connection": "s6-loopback", "url": "invoices"}, workflow)
    attempts.append(("connection base URL on loopback", str(refused.value)))

    # 3. A connection whose administrator limited it to one host: a template cannot send it elsewhere, even to an
    #    address that the global allowlist admits.
    settings.AIOS_HTTP_ALLOWLIST = ["127.0.0.1/32"]
    connection_update(actor=None, connection=connection, allowed_hosts=["erp.example.com"], allowed_ports=[])
    with pytest.raises(StepError) as refused:
        run_step({"connection": "s6-loopback", "url": "invoices"}, workflow)
    attempts.append(("connection limited to erp.example.com", str(refused.value)))
    settings.AIOS_HTTP_ALLOWLIST = []

    # 4. Redirects: an allowlisted server answers 302 to a blocked address; the step does not follow.
    targets = [
        f"http://127.0.0.1:{sink.port}/",
        f"http://[::1]:{sink.port}/",
        f"http://localhost:{sink.port}/",
        f"http://2130706433:{sink.port}/",
        "http://169.254.169.254/latest/meta-data/",
        f"http://[::ffff:127.0.0.1]:{sink.port}/",
    ]
    for target in targets:
        redirector = Listener(
            socket.AF_INET,
            "127.4.84.2",
            answer=(
                f"HTTP/1.1 302 Found\r\nLocation: {target}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            ).encode(),
        )
        settings.AIOS_HTTP_ALLOWLIST = ["127.4.84.2/32"]
        try:
            with pytest.raises(StepError) as refused:
                run_step({"url": f"http://127.4.84.2:{redirector.port}/start", "method": "GET"}, workflow)
            assert len(redirector.accepted) == 1  # the allowed first hop is really made ...
            assert "answered HTTP 302" in str(refused.value)  # ... and its redirect is returned, not followed
            attempts.append((f"redirect to {target}", str(refused.value)))
        finally:
            redirector.close()
            settings.AIOS_HTTP_ALLOWLIST = []

    leaked = len(sink.accepted)
    unexplained = [
        (host, message)
        for host, message in attempts
        if not any(
            words in message
            for words in (
                "are not allowed",
                "could not be resolved",
                "answered HTTP 302",
                "not among the destinations",
                "leaves the connection's address",
            )
        )
    ]
    total = len(attempts)
    ok = leaked == 0 and not unexplained and total >= 60
    record_figure(f"S6 connections to blocked ranges {leaked} of {total} {'ok' if ok else 'FAILED'}")
    assert leaked == 0, sink.accepted
    assert not unexplained, unexplained
    assert total >= 60


def test_s6_the_listener_counts_a_request_the_policy_lets_through(settings, sink, workflow):
    """The control: with loopback allowlisted, the same step does reach the listener, so a leak in the corpus
    above would have been counted."""
    settings.AIOS_HTTP_ALLOWLIST = ["127.0.0.1/32", "::1/128"]
    settings.AIOS_HTTP_ALLOWED_PORTS = []
    outcome = run_step({"url": f"http://127.0.0.1:{sink.port}/x", "method": "GET"}, workflow)
    assert outcome.output["body"] == "leak" and len(sink.accepted) == 1
    outcome = run_step({"url": f"http://[::1]:{sink.port}/x", "method": "GET"}, workflow)
    assert len(sink.accepted) == 2


def test_ports_other_than_80_and_443_need_an_administrator(settings, team, workflow, sink):
    settings.AIOS_HTTP_ALLOWLIST = []
    settings.AIOS_HTTP_ALLOWED_PORTS = []
    # A public address on another port is refused before any connection (this test has no internet: a request
    # that was let through would fail as unreachable, with another message).
    with pytest.raises(http.OutboundError, match="port 8080 is not allowed"):
        http.request("GET", "http://93.184.215.14:8080/", timeout=2)
    assert http.port_refusal(443, "93.184.215.14") is None
    assert http.port_refusal(8443, "93.184.215.14") is not None
    settings.AIOS_HTTP_ALLOWED_PORTS = [8443]
    assert http.port_refusal(8443, "93.184.215.14") is None
    # A connection's own ports and networks, set by an administrator.
    destinations, problems = http.destinations_parse(["127.0.0.0/8"], ["9443"])
    assert not problems
    assert http.port_refusal(9443, "93.184.215.14", destinations) is None
    assert http.port_refusal(9444, "93.184.215.14", destinations) is not None
    assert http.port_refusal(sink.port, "127.0.0.1", destinations) is None
    # An allowed network admits its addresses at any port, for that connection only.
    connection = make_connection(team, name="internal", config={"base_url": f"http://127.0.0.1:{sink.port}/"})
    with pytest.raises(StepError, match="a loopback address"):
        run_step({"connection": "internal", "url": "x"}, workflow)
    connection_update(actor=None, connection=connection, allowed_hosts=["127.0.0.1/32"], allowed_ports=[])
    assert run_step({"connection": "internal", "url": "x"}, workflow).output["body"] == "leak"
    assert len(sink.accepted) == 1


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        (teredo("127.0.0.1"), "loopback"),
        (teredo("169.254.169.254"), "link-local"),
        (teredo("10.0.0.1"), "private"),
        (teredo("100.100.100.200"), "shared"),
    ],
)
def test_teredo_addresses_are_judged_by_the_client_they_reach(settings, address, reason):
    settings.AIOS_HTTP_ALLOWLIST = []
    refusal = http.address_refusal(address)
    assert refusal is not None and reason in refusal, (address, refusal)
