"""Routes × personas: who gets 200, who gets 404. Every named route must appear in the table, so a new
route without a rule fails this test."""

from __future__ import annotations

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

from apps.runs.services import run_start

# Route name → {persona: expected status}. "anonymous" is redirected (pages) or refused (API).
OK, HIDDEN, FORBIDDEN, LOGIN, UNAUTHENTICATED = 200, 404, 403, 302, 403
EVERYONE_SIGNED_IN = {"analyst": OK, "reviewer": OK, "manager": OK, "outsider": OK}

MATRIX: dict[str, dict[str, int]] = {
    "home": {**EVERYONE_SIGNED_IN, "anonymous": LOGIN},
    "workflows:list": {**EVERYONE_SIGNED_IN, "anonymous": LOGIN},
    "workflows:detail": {"analyst": OK, "reviewer": OK, "manager": OK, "outsider": HIDDEN, "anonymous": LOGIN},
    "runs:list": {**EVERYONE_SIGNED_IN, "anonymous": LOGIN},
    "runs:detail": {"analyst": OK, "reviewer": OK, "manager": OK, "outsider": HIDDEN, "anonymous": LOGIN},
    # Managers read everything but run nothing; the form is hidden from them like from outsiders.
    "runs:create": {"analyst": OK, "reviewer": OK, "manager": HIDDEN, "outsider": HIDDEN, "anonymous": LOGIN},
    "api:workflow-list": {**EVERYONE_SIGNED_IN, "anonymous": UNAUTHENTICATED},
    "api:workflow-detail": {
        "analyst": OK,
        "reviewer": OK,
        "manager": OK,
        "outsider": HIDDEN,
        "anonymous": UNAUTHENTICATED,
    },
    "api:run-list": {**EVERYONE_SIGNED_IN, "anonymous": UNAUTHENTICATED},
    "api:run-detail": {"analyst": OK, "reviewer": OK, "manager": OK, "outsider": HIDDEN, "anonymous": UNAUTHENTICATED},
    "api:api-root": {**EVERYONE_SIGNED_IN, "anonymous": UNAUTHENTICATED},
    "api:schema": {**EVERYONE_SIGNED_IN, "anonymous": UNAUTHENTICATED},
    "api:docs": {**EVERYONE_SIGNED_IN, "anonymous": UNAUTHENTICATED},
}

# Routes checked elsewhere or not object-scoped: their own tests cover them.
EXEMPT = {
    "accounts:login",
    "accounts:logout",
    "healthz",
    "api:auth-token",
    "api:workflow-run-start",
}
PERSONAS = ["analyst", "reviewer", "manager", "outsider", "anonymous"]


def _route_names(resolver: URLResolver | None = None, namespace: str = "") -> set[str]:
    names: set[str] = set()
    for pattern in (resolver or get_resolver()).url_patterns:
        if isinstance(pattern, URLResolver):
            if pattern.namespace == "admin":
                continue  # Django's admin has its own staff-only guard
            inner = f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace
            names |= _route_names(pattern, inner)
        elif isinstance(pattern, URLPattern) and pattern.name:
            names.add(namespace + pattern.name)
    return names


def test_every_route_has_a_rule():
    unknown = {name for name in _route_names() if "format" not in name} - set(MATRIX) - EXEMPT
    assert not unknown, f"routes without a permission rule: {sorted(unknown)}"


@pytest.fixture
def world(analyst, reviewer, manager, outsider, claims_workflow, sample_claim):
    run, _ = run_start(actor=analyst, workflow=claims_workflow, inputs={"claim_text": sample_claim})
    return {
        "personas": {"analyst": analyst, "reviewer": reviewer, "manager": manager, "outsider": outsider},
        "args": {
            "workflows:detail": [claims_workflow.slug],
            "runs:detail": [run.pk],
            "runs:create": [claims_workflow.slug],
            "api:workflow-detail": [claims_workflow.slug],
            "api:run-detail": [run.pk],
        },
    }


@pytest.mark.parametrize("route", sorted(MATRIX))
@pytest.mark.parametrize("persona", PERSONAS)
def test_route_by_persona(world, route, persona):
    from django.urls import reverse

    client = APIClient()
    if persona != "anonymous":
        client.force_login(world["personas"][persona])
    url = reverse(route, args=world["args"].get(route, []))
    response = client.get(url)
    assert response.status_code == MATRIX[route][persona], f"{persona} GET {url}"
