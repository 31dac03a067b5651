"""Bad input on every route, pages and API alike (issue 14, "Bad input"): invalid UTF-8 and lone surrogates in
query strings, form bodies and JSON, JSON nested ten thousand levels deep, bodies over
DATA_UPLOAD_MAX_MEMORY_SIZE, the wrong content type, and out-of-range paging values. Each answer is below 500, and
a 4xx says why (a body that is not empty).

The requests come from the world's owner (Ana the analyst) and, for POST, also from an admin: the two who get
furthest into the views, so the input reaches the parsers and forms rather than stopping at a permission check."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.test import Client

from tests.security.inventory import http_routes, url_for
from tests.support.figures import record_figure

# Query strings: paging out of range or not a number, and text that is not UTF-8 or is a lone surrogate
# (%ED%A0%80 is U+D800 encoded as if it were a character).
QUERIES = [
    "limit=-1",
    f"limit={10**20}",
    "limit=abc",
    "offset=-5",
    f"offset={10**20}",
    "offset=abc",
    "page=0",
    "page=-1",
    f"page={10**20}",
    "page=abc",
    "page_size=-1",
    "q=%FF%FE&search=%FF",
    "q=%ED%A0%80&status=%ED%A0%80",
]

DEPTH = 10_000
OVERSIZED = settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1024

# Bodies: (what it is, content type, bytes).
BODIES = [
    ("form with invalid UTF-8", "application/x-www-form-urlencoded", b"name=%FF%FE&description=\xff\xfe"),
    ("form with a lone surrogate", "application/x-www-form-urlencoded", b"name=%ED%A0%80&note=%ED%A0%80"),
    ("JSON with a lone surrogate", "application/json", b'{"name": "\\ud800", "note": "\\udfff x", "inputs": {}}'),
    ("JSON with invalid UTF-8", "application/json", b'{"name": "\xff\xfe"}'),
    ("JSON nested 10,000 levels", "application/json", b"[" * DEPTH + b"]" * DEPTH),
    ("JSON objects nested 10,000 levels", "application/json", b'{"a":' * DEPTH + b"1" + b"}" * DEPTH),
    ("oversized form", "application/x-www-form-urlencoded", b"name=" + b"a" * OVERSIZED),
    ("oversized JSON", "application/json", b'{"name": "' + b"a" * OVERSIZED + b'"}'),
    ("wrong content type", "text/xml", b"<workflow><name>x</name></workflow>"),
    ("truncated multipart", "multipart/form-data; boundary=xyz", b"--xyz\r\nContent-Disposition: form-data; na"),
]

SMALL_BODIES = [body for body in BODIES if not body[0].startswith("oversized")]


def _problem(response) -> str | None:
    """Why this answer is not acceptable for bad input, or None."""
    if response.status_code >= 500:
        error = getattr(response, "exc_info", None)
        return f"{response.status_code} {error[0].__name__ + ': ' + str(error[1])[:120] if error else ''}"
    if 400 <= response.status_code < 500 and response.status_code != 405 and not response.content.strip():
        return f"{response.status_code} without a reason"
    return None


@pytest.mark.django_db
def test_bad_input_on_every_route_gets_no_server_error(world, admin_user_role):
    routes = http_routes()
    assert len(routes) > 100
    clients = []
    for user in (world["personas"]["analyst"], admin_user_role):
        client = Client(raise_request_exception=False)
        client.force_login(user)
        clients.append(client)

    requests, server_errors, problems = 0, 0, []

    def check(response, label: str) -> None:
        nonlocal requests, server_errors
        requests += 1
        server_errors += response.status_code >= 500
        if problem := _problem(response):
            problems.append(f"{label}: {problem}")

    # Query strings and the other methods from the owner; POST bodies, where most writes are, from both.
    analyst = clients[0]
    for route in routes:
        url = url_for(route, world["args"])
        for query in QUERIES:
            check(analyst.get(f"{url}?{query}"), f"GET {url}?{query} ({route.name})")
        for method, senders, bodies in (
            ("POST", clients, BODIES),
            ("PUT", [analyst], SMALL_BODIES),
            ("PATCH", [analyst], SMALL_BODIES),
            ("DELETE", [analyst], SMALL_BODIES),
        ):
            for client in senders:
                for what, content_type, body in bodies:
                    response = client.generic(method, url, body, content_type=content_type)
                    check(response, f"{method} {url} {what} ({route.name})")
    # Paths themselves: bytes that are not UTF-8 and an encoded surrogate where a slug or an id goes.
    for path in ("/workflows/%FF%FE/", "/workflows/%ED%A0%80/", "/runs/%FF/", "/api/workflows/%ED%A0%80/"):
        check(clients[0].get(path), f"GET {path}")

    ok = not problems
    record_figure(f"S3b bad input requests {requests} server_errors {server_errors} {'ok' if ok else 'FAILED'}")
    assert not problems, f"{len(problems)} bad requests got a bad answer:\n" + "\n".join(problems[:60])
