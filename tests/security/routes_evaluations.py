"""Evaluation suite routes × personas (loaded by test_permission_matrix.py). The suite belongs to the world's claims
workflow, which Ana owns: she edits and runs it; Rita (her team), Max the manager and Aude the auditor read it and
its reports but may change nothing (403); Otto the outsider may not know it exists (404)."""

from __future__ import annotations

from typing import Any

OK, HIDDEN, FORBIDDEN, LOGIN = 200, 404, 403, 302
READS = {"analyst": OK, "reviewer": OK, "manager": OK, "auditor": OK, "outsider": HIDDEN, "anonymous": LOGIN}
EDITS = {
    "analyst": OK,
    "reviewer": FORBIDDEN,
    "manager": FORBIDDEN,
    "auditor": FORBIDDEN,
    "outsider": HIDDEN,
    "anonymous": LOGIN,
}

MATRIX: dict[str, dict[str, int]] = {
    "evaluations:suite": {**READS},
    "evaluations:report": {**READS},
    "evaluations:compare": {**READS},
    "evaluations:settings": {**EDITS},
    "evaluations:case-new": {**EDITS},
    "evaluations:case-edit": {**EDITS},
}

EXEMPT = {
    # POST only (delete a case, import corrections, a recorded run as a case, run the suite, publish through it,
    # an admin's override): tests/evaluations/test_pages.py covers each by persona.
    "evaluations:case-delete",
    "evaluations:cases-import",
    "evaluations:case-from-run",
    "evaluations:run",
    "evaluations:publish",
    "evaluations:override",
}


def world_args(world: dict[str, Any]) -> dict[str, list[Any]]:
    from apps.evaluations.services import evaluation_case_save, evaluation_report_start, evaluation_suite_save
    from apps.workflows.demo import SAMPLE_CLAIMS
    from apps.workflows.services import workflow_draft_get_or_create

    analyst, workflow = world["personas"]["analyst"], world["workflow"]
    suite = evaluation_suite_save(actor=analyst, workflow=workflow, step_key="extract", min_accuracy="90")
    case = evaluation_case_save(
        actor=analyst,
        suite=suite,
        name="Bumper",
        inputs={"claim_text": SAMPLE_CLAIMS[0]["claim_text"]},
        expected={"amount": 850.0},
    )
    workflow_draft_get_or_create(actor=analyst, workflow=workflow)
    report = evaluation_report_start(actor=analyst, workflow=workflow)
    slug = [workflow.slug]
    return {
        "evaluations:suite": slug,
        "evaluations:settings": slug,
        "evaluations:case-new": slug,
        "evaluations:case-edit": [workflow.slug, case.pk],
        "evaluations:report": [workflow.slug, report.pk],
        "evaluations:compare": slug,
    }
