"""S3: cross-site request forgery. Every route the resolver knows, with every unsafe method, from a signed-in
browser session: without a CSRF token, and with a valid token but another site's Origin, the request is refused
(403, and the refusal names CSRF) and the database is unchanged. Every WebSocket path refuses a handshake from
another origin.

Excepted by design, and not swept here: requests authenticated by an API token (`Authorization: Token ...` or
`Bearer ...`: no cookie is sent, so a third-party page cannot ride on them; DRF checks CSRF for session
authentication only), the signed webhook receiver `hooks:receive` (its HMAC signature is the authentication:
tests/triggers/test_webhook.py), the token sign-in `api:auth-token` (it authenticates by the username and password
in its body, never by the session, sets no cookie, and answers the new token in its body, which another site's page
cannot read), browsers' Content-Security-Policy reports `csp-report` (sent without a token by design; a report
changes nothing but a rate-limited log line: tests/core/test_csp_report.py), and the MCP endpoint /mcp (bearer
tokens, not a Django route)."""

from __future__ import annotations

import asyncio

import pytest
from django.test import Client
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.security.inventory import (
    UNSAFE_METHODS,
    changed_tables,
    database_fingerprint,
    http_routes,
    url_for,
    websocket_paths,
)
from tests.support.figures import record_figure

# No cookie session can reach these: see the module's docstring.
DESIGNED_EXCEPTIONS = {"hooks:receive", "api:auth-token", "csp-report"}
FOREIGN_ORIGIN = "https://attacker.example"


def _csrf_refusal(response) -> bool:
    """A 403 that says it is the CSRF check's (Django's failure page or DRF's "CSRF Failed"), not a permission's."""
    return response.status_code == 403 and b"CSRF" in response.content


def _send(client: Client, method: str, url: str, **headers: str):
    if method == "POST":
        return client.post(url, {"name": "csrf probe", "note": "csrf probe"}, headers=headers)
    body = '{"name": "csrf probe"}'
    return getattr(client, method.lower())(url, body, content_type="application/json", headers=headers)


@pytest.mark.django_db
def test_s3_every_unsafe_route_refuses_a_forged_request(world, admin_user_role):
    """The admin (who may change the most) sends every unsafe method to every route, once without a token and once
    with a valid token from a foreign Origin; the control at the end is the workflow's owner's."""
    routes = [route for route in http_routes() if route.name not in DESIGNED_EXCEPTIONS]
    assert len(routes) > 100, "the resolver sweep found too few routes: is the URL walk broken?"
    sessions = {}
    for persona, user in (("admin", admin_user_role), ("analyst", world["personas"]["analyst"])):
        client = Client(enforce_csrf_checks=True)
        client.force_login(user)
        assert client.get("/").status_code == 200  # the page sets the CSRF cookie a forger could not read
        sessions[persona] = (client, client.cookies["csrftoken"].value)

    before = database_fingerprint()
    checks, refused, failures = 0, 0, []
    for route in routes:
        url = url_for(route, world["args"])
        for method in UNSAFE_METHODS:
            for persona, (client, token) in [("admin", sessions["admin"])]:
                attempts = {
                    "no token": {},
                    "foreign origin": {"X-CSRFToken": token, "Origin": FOREIGN_ORIGIN},
                }
                for attempt, headers in attempts.items():
                    response = _send(client, method, url, **headers)
                    checks += 1
                    if _csrf_refusal(response):
                        refused += 1
                    else:
                        failures.append(f"{persona} {method} {url} ({route.name}, {attempt}): {response.status_code}")
    changed = changed_tables(before, database_fingerprint())

    ok = refused == checks and not changed
    record_figure(f"S3 csrf refused {refused} of {checks} {'ok' if ok else 'FAILED'}")
    assert not failures, f"{len(failures)} forged requests were not refused by the CSRF check:\n" + "\n".join(
        failures[:40]
    )
    assert not changed, f"refused requests changed tables: {changed}"

    # The control: the same session with its token and its own origin is let through, so the refusals above
    # came from the missing token or the foreign origin and not from something else about the requests.
    client, token = sessions["analyst"]
    created = client.post(
        "/workflows/new/",
        {"name": "Made with a token", "team": world["workflow"].team.slug},
        headers={"X-CSRFToken": token, "Origin": "http://testserver"},
    )
    assert created.status_code == 302, created.content[:500]


def _session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_s3_every_websocket_refuses_a_foreign_origin(asgi_server, analyst):
    """A handshake with the analyst's session cookie from another site, from the same host on another port, or
    with no Origin at all is refused (403) on every socket path; from the product's own origin it is accepted."""
    paths = websocket_paths()
    assert len(paths) >= 3, paths
    cookie = _session_cookie(analyst)
    socket_base = asgi_server.replace("http://", "ws://")
    other_port = asgi_server.rsplit(":", 1)[0] + ":1"
    foreign = {"another site": FOREIGN_ORIGIN, "same host, other port": other_port, "no origin": None}

    async def handshake(path: str, origin: str | None) -> int:
        url = socket_base + "/" + path.replace("<int:run_id>", "1").replace("<int:message_id>", "1")
        try:
            async with connect(url, origin=origin, additional_headers={"Cookie": cookie}, open_timeout=10):
                return 101
        except InvalidStatus as refusal:
            return refusal.response.status_code

    async def sweep() -> tuple[dict[tuple[str, str], int], dict[str, int]]:
        refusals = {(path, name): await handshake(path, origin) for path in paths for name, origin in foreign.items()}
        controls = {path: await handshake(path, asgi_server) for path in paths}
        return refusals, controls

    refusals, controls = asyncio.run(sweep())
    refused = sum(status == 403 for status in refusals.values())
    ok = refused == len(refusals) and all(status == 101 for status in controls.values())
    record_figure(f"S3 websocket foreign origins refused {refused} of {len(refusals)} {'ok' if ok else 'FAILED'}")
    assert refused == len(refusals), {key: status for key, status in refusals.items() if status != 403}
    assert all(status == 101 for status in controls.values()), controls
