"""Fixtures for the knowledge tests: a collection of the analyst's team, and the demo knowledge base ingested
in this process against the development inference server's real /embed."""

from __future__ import annotations

from typing import Any

import pytest

from apps.knowledge.ingest import document_ingest
from apps.knowledge.models import Collection, Document

SMALL_KB = ("password-reset.md", "api-rate-limits.md", "webhooks.md", "refunds.md", "returns.md")


def ingest_all(collection: Collection) -> list[str]:
    """Run every due document's ingest here, as a worker would; returns each outcome."""
    return [document_ingest(pk) for pk in Document.objects.filter(collection=collection).values_list("pk", flat=True)]


def make_small_kb(analyst: Any, team: Any) -> Collection:
    """A "support-kb" collection of five of the demo's articles, ingested here."""
    from apps.knowledge.demo import ARTICLES_DIR
    from apps.knowledge.services import collection_create, document_upload

    collection = collection_create(actor=analyst, name="support-kb", title="Support", team=team)
    for name in SMALL_KB:
        document_upload(actor=analyst, collection=collection, name=name, data=(ARTICLES_DIR / name).read_bytes())
    assert set(ingest_all(collection)) == {"ready"}
    collection.refresh_from_db()
    return collection


@pytest.fixture
def collection(analyst: Any, team: Any) -> Collection:
    from apps.knowledge.services import collection_create

    return collection_create(actor=analyst, name="handbook", title="Handbook", team=team)


@pytest.fixture
def small_kb(analyst: Any, team: Any) -> Collection:
    """A "support-kb" collection of five of the demo's articles, ingested (embedding is the slow part)."""
    return make_small_kb(analyst, team)


@pytest.fixture
def support_kb(analyst: Any, team: Any) -> Collection:
    """The demo's support collection, every article ingested."""
    from apps.knowledge.demo import seed_knowledge_demo

    collection = seed_knowledge_demo(analyst, team)
    assert collection is not None
    assert set(ingest_all(collection)) == {"ready"}
    collection.refresh_from_db()
    return collection
