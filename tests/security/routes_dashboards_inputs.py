"""The KPI inputs pages' routes × personas (loaded by test_permission_matrix.py). Everyone who reads dashboards
(analyst, manager, auditor) reads the inputs page; only managers (and admins) open the forms that change them.
Reviewers and outsiders do not read dashboards at all (403 everywhere); the anonymous are sent to log in. A
process or endpoint she may read but not change is 403; one she may not read is 404 (tests/dashboards/
test_inputs.py covers that and the POSTs by persona)."""

from __future__ import annotations

from typing import Any

OK, FORBIDDEN, LOGIN = 200, 403, 302

MATRIX: dict[str, dict[str, int]] = {
    "dashboards:inputs": {
        "analyst": OK,
        "reviewer": FORBIDDEN,
        "manager": OK,
        "auditor": OK,
        "outsider": FORBIDDEN,
        "anonymous": LOGIN,
    },
    "dashboards:inputs-workflow": {
        "analyst": FORBIDDEN,
        "reviewer": FORBIDDEN,
        "manager": OK,
        "auditor": FORBIDDEN,
        "outsider": FORBIDDEN,
        "anonymous": LOGIN,
    },
    "dashboards:inputs-endpoint": {
        "analyst": FORBIDDEN,
        "reviewer": FORBIDDEN,
        "manager": OK,
        "auditor": FORBIDDEN,
        "outsider": FORBIDDEN,
        "anonymous": LOGIN,
    },
}

EXEMPT = {
    # POST only: tests/dashboards/test_inputs.py (test_rates_post_by_persona) covers every persona.
    "dashboards:inputs-rates",
}


def world_args(world: dict[str, Any]) -> dict[str, list[Any]]:
    from apps.inference.models import ModelEndpoint

    endpoint = ModelEndpoint.objects.get(name="matrix")
    return {
        "dashboards:inputs-workflow": [world["workflow"].slug],
        "dashboards:inputs-endpoint": [endpoint.name],
    }
