"""Every HTTP route and WebSocket path the product serves, read from its resolvers, plus the helpers the broad
security tests share: a URL for each route, and a fingerprint of the database to prove a refused request changed
nothing.

The lists come from the URL resolver and the ASGI application themselves, so a route added tomorrow is in the
CSRF, bad-input and authorization sweeps without anyone editing this file."""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.db import connection
from django.urls import URLPattern, URLResolver, get_resolver, reverse

UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")

# Tables a refused request may legitimately touch: the session store (Django re-saves a session it reads
# when it is about to expire), sign-in throttling, and the audit trail (denied requests are audited).
_UNTRACKED_TABLE = re.compile(r"^(django_session|axes_.*|audit_.*)$")


@dataclass(frozen=True)
class Route:
    """One named URL pattern: its full name (`namespace:name`) and the names of its URL parameters."""

    name: str
    parameters: tuple[str, ...]


def _walk(resolver: URLResolver, namespace: str) -> list[Route]:
    routes: list[Route] = []
    for pattern in resolver.url_patterns:
        if isinstance(pattern, URLResolver):
            if pattern.namespace == "admin":
                continue  # Django's admin: staff only, with its own CSRF protection, not ours to sweep
            inner = f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace
            for route in _walk(pattern, inner):
                routes.append(Route(route.name, tuple(_parameters(pattern)) + route.parameters))
        elif isinstance(pattern, URLPattern) and pattern.name:
            routes.append(Route(namespace + pattern.name, tuple(_parameters(pattern))))
    return routes


def _parameters(pattern: URLPattern | URLResolver) -> list[str]:
    return list(pattern.pattern.regex.groupindex)


def http_routes() -> list[Route]:
    """Every named route but the admin's and DRF's `.json` format-suffix twins, once each, sorted by name."""
    seen: dict[str, Route] = {}
    for route in _walk(get_resolver(), ""):
        if "format" in route.parameters:
            continue
        seen.setdefault(route.name, route)
    return sorted(seen.values(), key=lambda route: route.name)


def url_for(route: Route, known_args: dict[str, list[Any]]) -> str:
    """The route's URL: with the world's arguments when the world names some, else placeholders of the right
    shape (a number for ids, a word for slugs), which reach the view (and its refusals) without an object."""
    if route.name in known_args:
        return reverse(route.name, args=known_args[route.name])
    kwargs = {name: _placeholder(name) for name in route.parameters}
    return reverse(route.name, kwargs=kwargs)


def _placeholder(parameter: str) -> str:
    if parameter in ("pk", "number", "page", "index") or parameter.endswith("_id") or parameter == "id":
        return "1"
    return "placeholder"


def websocket_paths() -> list[str]:
    """The route strings of every WebSocket consumer, read from the ASGI application's router."""
    from aios_web.asgi import protocol_router

    application: Any = protocol_router.application_mapping["websocket"]
    # OriginValidator → CookieMiddleware → SessionMiddleware → AuthMiddleware → URLRouter
    while not hasattr(application, "routes"):
        application = getattr(application, "application", None) or application.inner
    return sorted(str(route.pattern) for route in application.routes)


def database_fingerprint() -> dict[str, str]:
    """Each tracked table's content hash: equal before and after means no row was added, changed or removed."""
    fingerprint: dict[str, str] = {}
    with connection.cursor() as cursor:
        for table in sorted(connection.introspection.table_names()):
            if _UNTRACKED_TABLE.match(table):
                continue
            quoted = connection.ops.quote_name(table)
            cursor.execute(f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {quoted} t")
            fingerprint[table] = cursor.fetchone()[0]
    return fingerprint


def changed_tables(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return sorted(table for table in before.keys() | after.keys() if before.get(table) != after.get(table))


# Areas keep their rule rows beside the matrix (tests/security/routes_<area>.py): each module has MATRIX, EXEMPT and
# `world_args(world) -> {route: args}`, which may create the objects its routes need.
AREAS = [
    importlib.import_module(f"tests.security.{path.stem}") for path in sorted(Path(__file__).parent.glob("routes_*.py"))
]
