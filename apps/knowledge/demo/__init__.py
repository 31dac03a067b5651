"""The demo's knowledge base: a support collection for Lumo, a fictional smart-lamp maker with a cloud
subscription (billing, refunds, accounts, shipping, devices, the developer API), written for AIOS, and a
labelled question set (each support question with the article that answers it) for the hit-rate benchmark
and the support-triage template's tests.

`seed_knowledge_demo(analyst, team)` creates the "support-kb" collection for the demo team and uploads every
article; their ingest runs on the workers. Safe to run again (nothing happens when the collection exists).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from apps.accounts.models import Team, User
from apps.knowledge.models import Collection

DEMO_DIR = Path(__file__).resolve().parent
ARTICLES_DIR = DEMO_DIR / "articles"
QUESTIONS_FILE = DEMO_DIR / "questions.json"
DEMO_COLLECTION = "support-kb"


def demo_articles() -> list[Path]:
    """The articles' files, by name."""
    return sorted(ARTICLES_DIR.glob("*.md"))


def demo_questions() -> list[dict[str, Any]]:
    """[{"question", "article"}, ...]: each article is a file name in `demo_articles()`."""
    data: dict[str, Any] = json.loads(QUESTIONS_FILE.read_text(encoding="utf-8"))
    return list(data["questions"])


def seed_knowledge_demo(analyst: User, team: Team) -> Collection | None:
    """Create the "support-kb" collection owned by `team` (created by `analyst`) and upload the articles.
    Returns the collection, or None when it already exists."""
    from apps.knowledge.services import collection_create, document_upload

    if Collection.objects.filter(name=DEMO_COLLECTION).exists():
        return None
    collection = collection_create(
        actor=analyst,
        name=DEMO_COLLECTION,
        title="Lumo support knowledge base",
        description="Help-centre articles about Lumo lamps and Lumo Cloud: billing, refunds, accounts, shipping, "
        "devices and the developer API. The support-triage workflow cites them in its replies.",
        team=team,
    )
    for path in demo_articles():
        document_upload(
            actor=analyst,
            collection=collection,
            name=path.name,
            data=path.read_bytes(),
            content_type="text/markdown",
            metadata={"source": "help-centre"},
        )
    return collection
