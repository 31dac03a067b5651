"""Checks every paged API list shares (L6): the `count/next/previous/results` envelope, `next` links that walk every
row once, and a `limit` above AIOS_API_MAX_PAGE_SIZE (or a malformed paging value) refused with a 400 in the
`{detail, fields}` shape of every refusal."""

from __future__ import annotations

from typing import Any

from django.conf import settings


def walk(client: Any, url: str, *, limit: int, key: str = "id") -> list[Any]:
    """Every row's `key`, page by page through `next`, first to last. Each page holds at most `limit` rows, every
    page but the last exactly `limit`, `count` is the same on each and equals the rows walked, and no row comes
    twice."""
    separator = "&" if "?" in url else "?"
    address: str | None = f"{url}{separator}limit={limit}"
    seen: list[Any] = []
    counts: set[int] = set()
    first = True
    while address:
        response = client.get(address)
        assert response.status_code == 200, (address, response.status_code, response.content[:300])
        body = response.json()
        assert set(body) >= {"count", "next", "previous", "results"}, body
        assert (body["previous"] is None) == first, (address, body["previous"])
        rows = body["results"]
        assert len(rows) <= limit and (len(rows) == limit or body["next"] is None), (address, len(rows))
        counts.add(body["count"])
        seen.extend(row[key] for row in rows)
        first, address = False, body["next"]
    assert len(seen) == len(set(seen)), f"a row came twice: {seen}"
    assert counts == {len(seen)}, (counts, len(seen))
    return seen


def assert_paging_refused(client: Any, url: str) -> None:
    """A limit over the maximum, or a limit or offset that is not a whole number in range, is a 400 naming the
    parameter; the maximum itself is answered."""
    top = settings.AIOS_API_MAX_PAGE_SIZE
    separator = "&" if "?" in url else "?"
    for query in (f"limit={top + 1}", "limit=1000000", "limit=0", "limit=abc", "offset=-1", "offset=x"):
        response = client.get(f"{url}{separator}{query}")
        assert response.status_code == 400, (url, query, response.status_code)
        body = response.json()
        name = query.split("=")[0]
        assert "whole number" in body["detail"] and name in body["fields"], (query, body)
    answered = client.get(f"{url}{separator}limit={top}")
    assert answered.status_code == 200 and len(answered.json()["results"]) <= top
