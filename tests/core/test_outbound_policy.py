"""The outbound address policy (apps.core.http): only public internet addresses, judged on the IPv4 address an
IPv6 one wraps, unless allowlisted; and every connector (HTTP, SMTP, SQL, IMAP) applies the same policy through
`resolve_checked`, refusing before anything is sent."""

from __future__ import annotations

import pytest

from apps.connectors.probes import probe
from apps.core import http

REFUSED = [
    ("100.100.100.200", "shared"),  # 100.64.0.0/10, Alibaba Cloud's metadata service
    ("100.64.0.1", "shared"),
    ("192.0.0.192", "protocol-assignment"),  # RFC 6890's block, "global" to some Python releases
    ("2002:a9fe:a9fe::", "link-local"),  # 6to4 wrapping 169.254.169.254
    ("2002:0a00:0001::1", "private"),  # 6to4 wrapping 10.0.0.1
    ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 wrapping 169.254.169.254
    ("64:ff9b::7f00:1", "loopback"),  # NAT64 wrapping 127.0.0.1
    ("::ffff:169.254.169.254", "link-local"),  # IPv4-mapped
    ("::ffff:127.0.0.1", "loopback"),
    ("fec0::1", "not on the public internet"),  # site-local
    ("64:ff9b:1::a00:1", ""),  # local-use NAT64
    ("192.0.2.10", "private"),  # documentation range
    ("224.0.0.1", "reserved"),
    ("fe80::1", "link-local"),
    ("fd00::1", "private"),
    ("0.0.0.0", ""),
]


@pytest.mark.parametrize(("address", "reason"), REFUSED)
def test_addresses_that_are_not_public_are_refused(settings, address, reason):
    settings.AIOS_HTTP_ALLOWLIST = []
    refusal = http.address_refusal(address)
    assert refusal is not None and reason in refusal, (address, refusal)


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:4700::1111", "2002:5db8:d70e::1", "64:ff9b::5db8:d70e"])
def test_public_addresses_pass_even_when_wrapped(settings, address):
    settings.AIOS_HTTP_ALLOWLIST = []
    assert http.address_refusal(address) is None


def test_the_allowlist_admits_a_wrapped_address_by_the_address_it_reaches(settings):
    settings.AIOS_HTTP_ALLOWLIST = ["100.100.100.0/24"]
    assert http.address_refusal("100.100.100.200") is None
    assert http.address_refusal("64:ff9b::6464:64c8") is None  # NAT64 of 100.100.100.200
    assert http.address_refusal("100.64.0.1") is not None


def test_resolve_checked_refuses_before_anything_is_sent(settings):
    settings.AIOS_HTTP_ALLOWLIST = []
    with pytest.raises(http.OutboundError, match="a shared"):
        http.resolve_checked("100.100.100.200", 80)
    with pytest.raises(http.HostUnresolved, match="could not be resolved"):
        http.resolve_checked("no-such-host.invalid", 80)
    with pytest.raises(http.OutboundError, match="requests there are not allowed"):
        http.request("GET", "http://[2002:a9fe:a9fe::]/latest/meta-data/", timeout=2)


@pytest.mark.parametrize("host", ["100.100.100.200", "2002:a9fe:a9fe::", "64:ff9b::a9fe:a9fe", "fec0::1"])
def test_every_connector_applies_the_one_policy(settings, host):
    """HTTP, SMTP, SQL and IMAP refuse the same addresses with the same reason, without a connection attempt
    (an attempt to these addresses would time out; the refusal is immediate)."""
    settings.AIOS_HTTP_ALLOWLIST = []
    url_host = f"[{host}]" if ":" in host else host
    cases = {
        "http": ({"base_url": f"http://{url_host}/"}, {}),
        "smtp": ({"host": host, "port": 25, "from_address": "a@example.com", "security": "none"}, {}),
        "sql": ({"host": host, "database": "x", "username": "u", "dialect": "mysql"}, {}),
        "mailbox": ({"host": host, "username": "u", "port": 993}, {"password": "pw-0005"}),
    }
    for kind, (config, secrets) in cases.items():
        result = probe(kind, config, secrets)
        assert not result.ok and "are not allowed" in result.message, (kind, result.message)
        assert result.seconds < 2, (kind, result.seconds)
