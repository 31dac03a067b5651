"""Routes × personas for the gallery's sample files (apps/workflows/views.py: gallery_sample_download).

The sample claim PDFs are the product's own examples, the same for everyone: anyone signed in downloads them
(a new user tries a template before anyone shares a workflow with her); the anonymous are sent to sign in.
Names outside the samples folder are 404 for everyone (tests/workflows/test_gallery.py)."""

from __future__ import annotations

from typing import Any

OK, LOGIN = 200, 302

MATRIX: dict[str, dict[str, int]] = {
    "workflows:gallery-sample": {"analyst": OK, "reviewer": OK, "manager": OK, "outsider": OK, "anonymous": LOGIN},
}

EXEMPT: set[str] = set()


def world_args(world: dict[str, Any]) -> dict[str, list[Any]]:
    return {"workflows:gallery-sample": ["claim-pol-10442-parking-lot-bumper.pdf"]}
