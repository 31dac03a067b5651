"""Routes × personas for triggers (apps/runs/trigger_views.py, apps/runs/api/trigger_views.py).

Whoever may see the workflow reads its triggers and their history; whoever may change it (its owner) manages them;
a form is for those who may run the workflow (the manager reads everything but runs nothing: 403)."""

from __future__ import annotations

from typing import Any

OK, HIDDEN, FORBIDDEN, LOGIN, UNAUTHENTICATED = 200, 404, 403, 302, 401
SEE = {"analyst": OK, "reviewer": OK, "manager": OK, "outsider": HIDDEN}
EDIT = {"analyst": OK, "reviewer": FORBIDDEN, "manager": FORBIDDEN, "outsider": HIDDEN}
RUN = {"analyst": OK, "reviewer": OK, "manager": FORBIDDEN, "outsider": HIDDEN}

MATRIX: dict[str, dict[str, int]] = {
    "runs:triggers": {**SEE, "anonymous": LOGIN},
    "runs:trigger-detail": {**SEE, "anonymous": LOGIN},
    "runs:trigger-new": {**EDIT, "anonymous": LOGIN},
    "runs:trigger-edit": {**EDIT, "anonymous": LOGIN},
    "runs:trigger-delete": {**EDIT, "anonymous": LOGIN},
    "runs:trigger-form": {**RUN, "anonymous": LOGIN},
    "api:workflow-trigger-list": {**SEE, "anonymous": UNAUTHENTICATED},
    "api:trigger-detail": {**SEE, "anonymous": UNAUTHENTICATED},
    "api:trigger-history": {**SEE, "anonymous": UNAUTHENTICATED},
}

EXEMPT = {
    # POST only: tests/triggers/test_pages.py (test_trigger_writes_by_persona) covers them by persona.
    "runs:trigger-pause",
    "runs:trigger-resume",
    "runs:trigger-rotate",
    "api:trigger-rotate",
    # POST only: tests/triggers/test_mailbox.py (test_check_now_by_persona) covers it by persona.
    "runs:trigger-check",
    # The webhook has no sign-in: its signature is the authentication (tests/triggers/test_webhook.py).
    "hooks:receive",
}


def world_args(world: dict[str, Any]) -> dict[str, list[Any]]:
    from apps.runs.triggers import trigger_create

    analyst, workflow = world["personas"]["analyst"], world["workflow"]
    form, _ = trigger_create(actor=analyst, workflow=workflow, kind="form", name="Matrix form")
    hook, _ = trigger_create(actor=analyst, workflow=workflow, kind="webhook", name="Matrix hook")
    return {
        "runs:triggers": [workflow.slug],
        "runs:trigger-detail": [hook.pk],
        "runs:trigger-new": [workflow.slug, "schedule"],
        "runs:trigger-edit": [hook.pk],
        "runs:trigger-delete": [hook.pk],
        "runs:trigger-form": [form.pk],
        "api:workflow-trigger-list": [workflow.slug],
        "api:trigger-detail": [hook.pk],
        "api:trigger-history": [hook.pk],
    }
