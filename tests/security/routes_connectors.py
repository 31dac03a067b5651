"""Connections' routes × personas (loaded by test_permission_matrix.py). The world's connection "matrix-erp"
belongs to the analyst's team (Ana and Rita may use it, so they see it; nobody among the personas manages it;
Max the manager and Otto the outsider may not know it exists)."""

from __future__ import annotations

from typing import Any

OK, HIDDEN, FORBIDDEN, LOGIN, UNAUTHENTICATED = 200, 404, 403, 302, 401
SIGNED_IN = ("analyst", "reviewer", "manager", "outsider")
# Those who may use the team's connection read it; the others get 404.
USERS_SEE = {"analyst": OK, "reviewer": OK, "manager": HIDDEN, "outsider": HIDDEN}

MATRIX: dict[str, dict[str, int]] = {
    # Everyone signed in has a list (empty, with an explanation, for those without connections).
    "connectors:connections": {**dict.fromkeys(SIGNED_IN, OK), "anonymous": LOGIN},
    # A team's page: its members (and admins); the others may not know the team's connections.
    "connectors:team": {**USERS_SEE, "anonymous": LOGIN},
    # Only admins create connections (tests/connectors/test_pages.py covers admins).
    "connectors:create": {**dict.fromkeys(SIGNED_IN, FORBIDDEN), "anonymous": LOGIN},
    # A connection: read-only for those who may use it; its form for those who manage it (test_pages.py).
    "connectors:detail": {**USERS_SEE, "anonymous": LOGIN},
    # The confirmation page: those who see it but do not manage it are told no.
    "connectors:delete": {
        "analyst": FORBIDDEN,
        "reviewer": FORBIDDEN,
        "manager": HIDDEN,
        "outsider": HIDDEN,
        "anonymous": LOGIN,
    },
    # An HTTP connection's OpenAPI document: its operations for those who may use it (loading and removing it
    # are POSTs for managers: tests/connectors/test_openapi_documents.py covers them by persona).
    "connectors:openapi": {**USERS_SEE, "anonymous": LOGIN},
    "api:connection-list": {**dict.fromkeys(SIGNED_IN, OK), "anonymous": UNAUTHENTICATED},
    "api:connection-detail": {**USERS_SEE, "anonymous": UNAUTHENTICATED},
}

EXEMPT = {
    # POST only (test, enable/disable, the new form's test, the API's test): tests/connectors/test_pages.py
    # (test_writes_by_persona) covers them for every persona and an admin.
    "connectors:create-test",
    "connectors:test",
    "connectors:toggle",
    "api:connection-test",
}


def world_args(world: dict[str, Any]) -> dict[str, list[Any]]:
    from tests.connectors.helpers import make_connection

    team = world["workflow"].team
    connection = make_connection(team, name="matrix-erp")
    return {
        "connectors:team": [team.slug],
        "connectors:detail": [connection.name],
        "connectors:delete": [connection.name],
        "connectors:openapi": [connection.name],
        "api:connection-detail": [connection.name],
    }
