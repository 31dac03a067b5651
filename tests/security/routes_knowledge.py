"""Knowledge routes × personas (loaded by test_permission_matrix.py). The world's collection "matrix-kb" belongs to
the analyst's team and was created by Ana, so she manages it; Rita (her teammate) reads and searches it but may
not change it (403); Max the manager and Otto the outsider may not know it exists (404)."""

from __future__ import annotations

from typing import Any

OK, HIDDEN, FORBIDDEN, LOGIN, UNAUTHENTICATED, BAD = 200, 404, 403, 302, 401, 400
SIGNED_IN = ("analyst", "reviewer", "manager", "outsider")
TEAM_READS = {"analyst": OK, "reviewer": OK, "manager": HIDDEN, "outsider": HIDDEN}
MANAGER_ONLY = {"analyst": OK, "reviewer": FORBIDDEN, "manager": HIDDEN, "outsider": HIDDEN}

MATRIX: dict[str, dict[str, int]] = {
    # Everyone signed in has the list (empty, with an explanation, for those without collections).
    "knowledge:collections": {**dict.fromkeys(SIGNED_IN, OK), "anonymous": LOGIN},
    "knowledge:detail": {**TEAM_READS, "anonymous": LOGIN},
    "knowledge:documents": {**TEAM_READS, "anonymous": LOGIN},
    "knowledge:search": {**TEAM_READS, "anonymous": LOGIN},
    # Changing pages: the collection's managers; those who only read it are told no.
    "knowledge:settings": {**MANAGER_ONLY, "anonymous": LOGIN},
    "knowledge:delete": {**MANAGER_ONLY, "anonymous": LOGIN},
    "knowledge:document-delete": {**MANAGER_ONLY, "anonymous": LOGIN},
    "api:collection-list": {**dict.fromkeys(SIGNED_IN, OK), "anonymous": UNAUTHENTICATED},
    "api:collection-detail": {**TEAM_READS, "anonymous": UNAUTHENTICATED},
    "api:collection-documents": {**TEAM_READS, "anonymous": UNAUTHENTICATED},
    "api:collection-document": {**TEAM_READS, "anonymous": UNAUTHENTICATED},
    # A search without `q` is a bad request for those who may search; the others may not know the collection.
    "api:collection-search": {
        "analyst": BAD,
        "reviewer": BAD,
        "manager": HIDDEN,
        "outsider": HIDDEN,
        "anonymous": UNAUTHENTICATED,
    },
}

EXEMPT = {
    # POST only (upload, re-embed): tests/knowledge/test_pages.py and test_api.py (test_writes_by_persona) cover
    # them for every persona and an admin.
    "knowledge:upload",
    "knowledge:reindex",
    "api:collection-reindex",
}


def world_args(world: dict[str, Any]) -> dict[str, list[Any]]:
    from apps.knowledge.services import collection_create, document_upload

    analyst = world["personas"]["analyst"]
    collection = collection_create(actor=analyst, name="matrix-kb", title="Matrix KB", team=world["workflow"].team)
    document, _ = document_upload(
        actor=analyst,
        collection=collection,
        name="notes.md",
        data=b"# Notes\n\nSome notes.",
        content_type="text/markdown",
    )
    name = [collection.name]
    return {
        "knowledge:detail": name,
        "knowledge:documents": name,
        "knowledge:search": name,
        "knowledge:settings": name,
        "knowledge:delete": name,
        "knowledge:document-delete": [collection.name, document.pk],
        "api:collection-detail": name,
        "api:collection-documents": name,
        "api:collection-document": [collection.name, document.pk],
        "api:collection-search": name,
    }
