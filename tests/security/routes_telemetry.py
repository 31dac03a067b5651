"""Operations telemetry routes × personas (loaded by test_permission_matrix.py).

/metrics is for scrapers holding the metrics token and for admins (tests/core/test_metrics.py covers both):
every persona here, the auditor included, gets 404, as does an anonymous caller, so the route's existence is not
revealed. /readyz is a probe: it answers everyone, signed in or not, with the dependencies' state (no addresses,
no error messages), 200 while they are all up."""

from __future__ import annotations

from typing import Any

OK, HIDDEN = 200, 404
EVERYONE = ("analyst", "reviewer", "manager", "outsider", "auditor", "anonymous")

MATRIX: dict[str, dict[str, int]] = {
    "metrics": dict.fromkeys(EVERYONE, HIDDEN),
    "readyz": dict.fromkeys(EVERYONE, OK),
}

EXEMPT: set[str] = set()


def world_args(world: dict[str, Any]) -> dict[str, list[Any]]:
    return {}
