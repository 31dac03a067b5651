"""Dashboard pages × personas (loaded by test_permission_matrix.py).

The dashboards are for those who hold dashboards.view_dashboards (managers, analysts, auditors, admins): Rita the
reviewer and Otto the outsider are told no (403) on every dashboard page, fragment and download. Within them, a
process, queue or endpoint a person may not read is a 404 (tests/dashboards/test_pages.py covers that with a
second team's objects). Ana the analyst reads her own workflows' figures and the endpoints her steps may name;
Max the manager and Aude the auditor read every process, every queue and every endpoint."""

from __future__ import annotations

from typing import Any

OK, HIDDEN, FORBIDDEN, LOGIN = 200, 404, 403, 302
READERS = {
    "analyst": OK,
    "manager": OK,
    "auditor": OK,
    "reviewer": FORBIDDEN,
    "outsider": FORBIDDEN,
    "anonymous": LOGIN,
}
# A queue's figures: those who work or lead it, and those who read every run (manager, auditor). Ana builds the
# workflows that send items there but neither works nor leads the queue.
QUEUE_READERS = {**READERS, "analyst": HIDDEN}

MATRIX: dict[str, dict[str, int]] = {
    "dashboards:overview": {**READERS},
    "dashboards:widget": {**READERS},
    "dashboards:widget-csv": {**READERS},
    "dashboards:process": {**READERS},
    "dashboards:process-widget": {**READERS},
    "dashboards:process-widget-csv": {**READERS},
    # The index pages list what each may read (possibly nothing); never a 404.
    "dashboards:queues": {**READERS},
    "dashboards:queue": {**QUEUE_READERS},
    "dashboards:queue-widget": {**QUEUE_READERS},
    "dashboards:queue-widget-csv": {**QUEUE_READERS},
    "dashboards:endpoints": {**READERS},
    "dashboards:endpoint": {**READERS},
    "dashboards:endpoint-widget": {**READERS},
    "dashboards:endpoint-widget-csv": {**READERS},
}

EXEMPT = {
    # The digest toggle (POST only): tests/dashboards/test_digest.py covers it by persona.
    "dashboards:digest",
}


def world_args(world: dict[str, Any]) -> dict[str, list[Any]]:
    slug = world["workflow"].slug
    queue = world["args"]["approvals:queue"][0]
    endpoint = "matrix"
    return {
        "dashboards:widget": ["kpis"],
        "dashboards:widget-csv": ["kpis"],
        "dashboards:process": [slug],
        "dashboards:process-widget": [slug, "versions"],
        "dashboards:process-widget-csv": [slug, "versions"],
        "dashboards:queue": [queue],
        "dashboards:queue-widget": [queue, "reviewers"],
        "dashboards:queue-widget-csv": [queue, "reviewers"],
        "dashboards:endpoint": [endpoint],
        "dashboards:endpoint-widget": [endpoint, "endpoint-calls"],
        "dashboards:endpoint-widget-csv": [endpoint, "endpoint-calls"],
    }
