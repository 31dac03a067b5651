"""Routes × personas for "Describe it, get a draft" (apps/workflows/drafting_views.py).

Only those who create workflows (analysts) open the description form; a proposal is its author's, and admins read
it too (the admin role is not one of the matrix's personas: tests/workflows/test_drafting_pages.py covers it);
everyone else may not know it exists (404)."""

from __future__ import annotations

from typing import Any

OK, HIDDEN, FORBIDDEN, LOGIN = 200, 404, 403, 302

MATRIX: dict[str, dict[str, int]] = {
    "workflows:draft-propose": {
        "analyst": OK,
        "reviewer": FORBIDDEN,
        "manager": FORBIDDEN,
        "auditor": FORBIDDEN,
        "outsider": FORBIDDEN,
        "anonymous": LOGIN,
    },
    "workflows:draft-proposal": {
        "analyst": OK,
        "reviewer": HIDDEN,
        "manager": HIDDEN,
        "auditor": HIDDEN,
        "outsider": HIDDEN,
        "anonymous": LOGIN,
    },
}

EXEMPT = {
    # POST only: tests/workflows/test_drafting_pages.py (test_others_do_not_see_a_proposal_and_admins_only_read_it,
    # test_accept_opens_the_builder_and_discard_goes_back) covers them by persona.
    "workflows:draft-accept",
    "workflows:draft-discard",
}


def world_args(world: dict[str, Any]) -> dict[str, list[Any]]:
    from apps.workflows.exchange import document_build
    from apps.workflows.models import DraftProposal

    # A proposal as the service stores it, without asking a model: the claims workflow's own document.
    workflow = world["workflow"]
    document = document_build(workflow, workflow.versions.get(number=1))
    document.pop("version", None)
    document.pop("requires", None)
    proposal = DraftProposal.objects.create(
        author=world["personas"]["analyst"],
        description="Claims arrive as text; extract the fields and ask a person about the large ones.",
        document=document,
        explanations={},
        summary="The demo's claims triage.",
    )
    return {"workflows:draft-propose": [], "workflows:draft-proposal": [proposal.pk]}
