"""S5: sign-in throttling against the real web server (uvicorn, started as the fleet starts it), from real client
addresses: IPv4 loopback addresses and IPv6 addresses this test adds to the loopback interface.

- an attacker's wrong guesses from one address lock only that (name, address) pair;
- the real person, from another address, still signs in;
- a forged X-Forwarded-For from a client that is no configured proxy (here 127.0.0.1, which uvicorn trusted by
  default) is ignored: the guesses count under the real peer address, so rotating the header buys nothing;
- two addresses in one IPv6 /64 share a counter (and a third in another /64 does not).

Prints `S5 lockout victim_locked <0|1> attacker_locked <0|1> spoofed_xff_ignored <0|1> ipv6_grouped <0|1> ok|miss`.
"""

from __future__ import annotations

import http.client
import json
import re
import subprocess
from collections.abc import Iterator
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlencode

import pytest

from apps.audit.models import AuditEvent
from tests.conftest import PASSWORD
from tests.support.figures import record_figure
from tests.support.processes import free_port, http_ok, running, service_env
from workers import fleet

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

LIMIT = 5
# Addresses of one /64 and of a neighbouring /64, from the documentation-adjacent unique local range.
SAME_64 = ("fd5e:5e:5e:5e::a", "fd5e:5e:5e:5e::b")
OTHER_64 = "fd5e:5e:5e:5f::a"


class Browser:
    """A client with cookies that always connects from `source` (a local address it binds to)."""

    def __init__(self, host: str, port: int, source: str) -> None:
        self.host, self.port, self.source = host, port, source
        self.cookies: dict[str, str] = {}

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], str]:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=30, source_address=(self.source, 0))
        all_headers = {"Host": f"127.0.0.1:{self.port}", **(headers or {})}
        if self.cookies:
            all_headers["Cookie"] = "; ".join(f"{name}={value}" for name, value in self.cookies.items())
        try:
            connection.request(method, path, body=body, headers=all_headers)
            response = connection.getresponse()
            text = response.read().decode()
        finally:
            connection.close()
        for header in response.headers.get_all("Set-Cookie") or []:
            for name, morsel in SimpleCookie(header).items():
                self.cookies[name] = morsel.value
        return response.status, dict(response.headers.items()), text

    def sign_in(self, username: str, password: str, headers: dict[str, str] | None = None) -> int:
        """The sign-in page, as a person uses it: GET for the form's CSRF token, then POST. Returns the POST's
        status: 302 signed in, 200 wrong password, 429 locked."""
        status, _headers, page = self.request("GET", "/accounts/login/", headers=headers)
        assert status == 200, page[:300]
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        assert token is not None
        form = {"csrfmiddlewaretoken": token.group(1), "username": username, "password": password, "next": ""}
        status, _headers, _page = self.request(
            "POST",
            "/accounts/login/",
            urlencode(form).encode(),
            {
                "Content-Type": "application/x-www-form-urlencoded",
                "Referer": f"http://127.0.0.1:{self.port}/",
                **(headers or {}),
            },
        )
        return status


@pytest.fixture(scope="module")
def ipv6_loopback() -> Iterator[None]:
    """The test's IPv6 addresses on the loopback interface, removed afterwards."""
    added = []
    for address in (*SAME_64, OTHER_64):
        result = subprocess.run(
            ["ip", "-6", "addr", "add", f"{address}/128", "dev", "lo", "nodad"], capture_output=True, text=True
        )
        assert result.returncode == 0 or "exists" in result.stderr, result.stderr
        added.append(address)
    try:
        yield
    finally:
        for address in added:
            subprocess.run(["ip", "-6", "addr", "del", f"{address}/128", "dev", "lo"], capture_output=True)


@pytest.fixture(scope="module")
def web(django_db_setup: Any, django_db_blocker: Any, ipv6_loopback: None) -> Iterator[tuple[int, int]]:
    """The web server, started with the fleet's own command line and no proxy configured (FORWARDED_ALLOW_IPS
    unset): one on 127.0.0.1 and one on "::" (asyncio listens on IPv6 only there), sharing the database and Redis
    as the replicas of a deployment do. Yields their ports."""
    port4, port6 = free_port(), free_port()
    with django_db_blocker.unblock():
        env = service_env(
            DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost,[::1]",
            AIOS_PUBLIC_URLS=f"http://127.0.0.1:{port4}",
            AIOS_LOGIN_MAX_FAILURES=str(LIMIT),
            # The per-name slowdown is another layer (tests/accounts/test_login.py): kept out of this count.
            AIOS_LOGIN_USER_FREE_FAILURES="1000",
        )
    env.pop("FORWARDED_ALLOW_IPS", None)
    argv4 = fleet.web_argv(port4, log_level="warning")
    argv6 = fleet.web_argv(port6, host="::", log_level="warning")
    assert "--no-proxy-headers" in argv4 and "--no-proxy-headers" in argv6  # the fleet's, without a proxy
    with (
        running("s5-asgi-4", argv4, ready=lambda log: http_ok(f"http://127.0.0.1:{port4}/healthz"), env=env),
        running("s5-asgi-6", argv6, ready=lambda log: http_ok(f"http://[::1]:{port6}/healthz"), env=env),
    ):
        yield port4, port6


def test_s5_login_throttling(web, analyst, reviewer):
    port, port6 = web
    # 1. The attacker at 127.0.0.1 guesses ana's password, each time claiming another address in X-Forwarded-For
    #    (uvicorn's default trusted exactly this peer's header).
    attacker = Browser("127.0.0.1", port, "127.0.0.1")
    guesses = [attacker.sign_in("ana", f"guess-{n}", {"X-Forwarded-For": f"198.51.100.{n + 1}"}) for n in range(LIMIT)]
    attacker_final = attacker.sign_in("ana", PASSWORD, {"X-Forwarded-For": "198.51.100.200"})
    # The guess that reaches the limit is already answered with the lock (django-axes locks at the failure), and
    # so is the right password from there afterwards.
    attacker_locked = int(guesses == [200] * (LIMIT - 1) + [429] and attacker_final == 429)
    failures = [
        json.loads(data) for data in AuditEvent.objects.filter(verb="user.login_failed").values_list("data", flat=True)
    ]
    spoofed_xff_ignored = int(
        attacker_locked == 1 and len(failures) == LIMIT and {f["client_ip"] for f in failures} == {"127.0.0.1"}
    )

    # 2. Ana herself, from her own address, with her password.
    victim_status = Browser("127.0.0.1", port, "127.0.0.2").sign_in("ana", PASSWORD)
    victim_locked = int(victim_status != 302)

    # 3. Guesses at rita's password spread over two addresses of one /64 lock both; another /64 is not locked.
    first, second = (Browser("::1", port6, source) for source in SAME_64)
    spread = [first.sign_in("rita", "x") for _ in range(3)] + [second.sign_in("rita", "y") for _ in range(LIMIT - 3)]
    neighbour_locked = second.sign_in("rita", PASSWORD) == 429 and first.sign_in("rita", PASSWORD) == 429
    other_block = Browser("::1", port6, OTHER_64).sign_in("rita", PASSWORD)
    ipv6_grouped = int(spread == [200] * (LIMIT - 1) + [429] and neighbour_locked and other_block == 302)

    ok = victim_locked == 0 and attacker_locked == 1 and spoofed_xff_ignored == 1 and ipv6_grouped == 1
    record_figure(
        f"S5 lockout victim_locked {victim_locked} attacker_locked {attacker_locked} "
        f"spoofed_xff_ignored {spoofed_xff_ignored} ipv6_grouped {ipv6_grouped} {'ok' if ok else 'miss'}"
    )
    assert ok, {"attacker": [*guesses, attacker_final], "victim": victim_status, "ipv6": [*spread, other_block]}
    # The lock was audited once, under the real peer address, and without the typed name.
    (locked,) = [
        json.loads(data)
        for data in AuditEvent.objects.filter(verb="user.login_locked", target_id=str(analyst.pk)).values_list(
            "data", flat=True
        )
    ]
    assert locked["client_ip"] == "127.0.0.1" and "ana" not in json.dumps(locked).replace("username", "")
