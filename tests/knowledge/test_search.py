"""Search on real passages of the demo knowledge base (MiniLM vectors from the development server): each mode,
filters, minimum score, the HNSW index in the plan, the hit rate at 5 on the labelled questions, and retrieval
that respects the run's workflow."""

from __future__ import annotations

import pytest
from django.db import connection

from apps.knowledge.demo import demo_questions
from apps.knowledge.evaluation import hit_rate_at_k
from apps.knowledge.models import Collection
from apps.knowledge.search import MODES, collections_search, highlight_segments
from apps.knowledge.selectors import collections_for_workflow
from tests.support.figures import record_figure

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_finds_the_answer(small_kb, mode):
    support_kb = small_kb
    passages = collections_search([support_kb], "How do I reset my password?", mode=mode, top_k=3)
    assert passages[0]["document"] == "password-reset.md"
    first = passages[0]
    assert set(first) >= {"chunk_id", "text", "document", "document_id", "page", "heading", "score", "collection"}
    assert first["collection"] == "support-kb" and first["page"] == 1
    assert first["heading"].startswith("Resetting your password")
    assert [p["score"] for p in passages] == sorted((p["score"] for p in passages), reverse=True)
    if mode == "vector":
        assert 0.5 < first["score"] <= 1.0
    if mode == "hybrid":
        assert first["score"] <= 1.0 and "vector_score" in first


def test_full_text_prefers_every_word_and_understands_phrases_and_exclusions(small_kb):
    support_kb = small_kb
    passages = collections_search([support_kb], '"rate limit" -webhook', mode="fulltext", top_k=5)
    assert passages and all("webhook" not in p["text"].lower() for p in passages)
    assert passages[0]["document"] == "api-rate-limits.md"
    assert collections_search([support_kb], "zzzqqq", mode="fulltext") == []


def test_filters_and_minimum_score(small_kb):
    support_kb = small_kb
    only = collections_search([support_kb], "refund", mode="hybrid", top_k=10, filters={"document": "returns.md"})
    assert only and {p["document"] for p in only} == {"returns.md"}
    strict = collections_search([support_kb], "refund", mode="vector", top_k=10, min_score=0.45)
    assert all(p["score"] >= 0.45 for p in strict)
    assert len(strict) < len(collections_search([support_kb], "refund", mode="vector", top_k=10))
    with pytest.raises(ValueError):
        collections_search([support_kb], "x", mode="magic")
    with pytest.raises(ValueError):
        collections_search([support_kb], "  ")


def test_vector_search_reads_the_hnsw_index_of_its_size(small_kb):
    support_kb = small_kb
    vector = "[" + ",".join(["0.05"] * 384) + "]"
    with connection.cursor() as cursor:
        # A 70-row table would otherwise be scanned whole, or read through the collection's btree and sorted:
        # the planner chooses by cost, and on a table this small either is cheaper than the HNSW index.
        cursor.execute("SET enable_seqscan = off")
        cursor.execute("SET enable_bitmapscan = off")
        cursor.execute("SET enable_sort = off")
        cursor.execute(
            "EXPLAIN SELECT id FROM knowledge_chunk c WHERE c.dimensions = 384 AND c.collection_id = %s "
            "ORDER BY (c.embedding::vector(384)) <=> %s::vector(384) LIMIT 5",
            [support_kb.pk, vector],
        )
        plan = "\n".join(row[0] for row in cursor.fetchall())
        cursor.execute("RESET enable_seqscan")
        cursor.execute("RESET enable_bitmapscan")
        cursor.execute("RESET enable_sort")
    assert "chunk_embedding_384_hnsw" in plan, plan


def test_hit_rate_at_5_on_the_labelled_questions(support_kb):
    questions = demo_questions()
    assert len(questions) >= 30
    rates = hit_rate_at_k([support_kb], questions, k=5)
    assert list(rates) == list(MODES)
    with pytest.raises(ValueError):
        hit_rate_at_k([support_kb], [])
    record_figure(
        "K1 hit_rate_at_5 " + " ".join(f"{mode} {rate:.2f}" for mode, rate in rates.items()) + f" n {len(questions)}"
    )
    # The step's default (hybrid) stays within two questions of the better single mode; measured: vector 0.97,
    # full text 0.87, hybrid 0.95 of 38 (hybrid keeps exact identifiers that a small embedding model blurs).
    assert rates["hybrid"] >= max(rates["vector"], rates["fulltext"]) - 2 / len(questions)
    assert rates["vector"] >= 0.85 and rates["fulltext"] >= 0.7


def test_highlighting_marks_words_and_produces_no_markup():
    segments = highlight_segments("Refunds <b>arrive</b> in 5 days.", "When will my refund arrive?")
    assert ("Refunds", True) in segments and ("arrive", True) in segments
    assert "".join(piece for piece, _ in segments) == "Refunds <b>arrive</b> in 5 days."


def test_a_workflow_searches_only_what_its_team_or_owner_may(small_kb, analyst, outsider, team):
    support_kb = small_kb
    from apps.accounts.services import team_create
    from apps.workflows.services import workflow_create

    own = workflow_create(actor=analyst, name="Support triage", team=team)
    usable, problems = collections_for_workflow(["support-kb"], own.pk)
    assert usable == [support_kb] and problems == []
    other_team = team_create(name="Marketing", members=[outsider])
    foreign = workflow_create(actor=analyst, name="Copy", team=other_team)
    usable, problems = collections_for_workflow(["support-kb", "missing"], foreign.pk)
    assert usable == []
    assert problems == [
        'this workflow may not read the knowledge collection "support-kb"',
        'there is no knowledge collection "missing"',
    ]
    # A workflow without a team: its owner's rights count.
    solo = workflow_create(actor=analyst, name="Solo")
    assert collections_for_workflow(["support-kb"], solo.pk)[0] == [support_kb]
    # ...and an owner without the right cannot lend it to her workflow.
    outsiders = workflow_create(actor=outsider, name="Outsider's")
    assert collections_for_workflow(["support-kb"], outsiders.pk)[0] == []
    assert Collection.objects.count() == 1
