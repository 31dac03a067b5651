"""Ingest in this process (a worker's part, driven by the test): passages along sections with their heading
path and page, progress per batch, a second delivery that changes nothing, a crash mid-way taken up again by the
periodic pickup, re-embedding after a model change, and failures that name the document."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from apps.knowledge import chunking
from apps.knowledge.ingest import document_claim, document_ingest, documents_resume_due
from apps.knowledge.models import Chunk, Document
from apps.knowledge.services import collection_reindex, document_upload

pytestmark = pytest.mark.django_db


def long_markdown(sections: int = 6, sentences: int = 40) -> bytes:
    parts = ["# Lumo field guide"]
    for number in range(1, sections + 1):
        parts.append(f"## Topic {number}")
        parts.append(
            " ".join(f"Sentence {i} of topic {number} explains lamp care and billing." for i in range(sentences))
        )
    return "\n\n".join(parts).encode()


def test_passages_follow_sections_with_heading_paths_and_overlap(analyst, collection):
    document, _ = document_upload(actor=analyst, collection=collection, name="guide.md", data=long_markdown())
    assert document_ingest(document.pk) == "ready"
    document.refresh_from_db()
    chunks = list(Chunk.objects.filter(document=document).order_by("ordinal"))
    assert document.chunks_total == len(chunks) == document.chunks_done > 6
    assert document.format == "markdown" and document.pages == 1
    for chunk in chunks:
        # Never across a section: every passage's text belongs to the one topic its heading names.
        topic = chunk.heading.rsplit(" › ", 1)[-1]
        assert chunk.heading.startswith("Lumo field guide"), chunk.heading
        if topic.startswith("Topic "):
            assert f"of topic {topic.split()[1]} " in chunk.text and "Topic" not in chunk.text.replace(topic, "")
        assert chunk.token_count <= collection.chunk_tokens
        assert chunk.dimensions == 384 and chunk.embedding is not None and chunk.generation == collection.generation
        assert chunk.metadata["document"] == "guide.md" and chunk.metadata["section"] == chunk.heading
    same_topic = [c for c in chunks if c.heading.endswith("Topic 1")]
    assert len(same_topic) >= 2
    # Overlap: the next passage of a section opens with the last sentence of the one before.
    last_sentence = same_topic[0].text.rsplit(". ", 1)[-1]
    assert last_sentence in same_topic[1].text[: len(same_topic[1].text) // 2]
    assert not same_topic[1].text.startswith(same_topic[0].text[:40])


def test_token_count_approximation():
    assert chunking.count_tokens("") == 0
    assert chunking.count_tokens("Refunds take 5 to 10 days.") == 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1  # words, numbers, dot
    assert chunking.count_tokens("internationalisation") == 4  # 20 letters: one token per five
    with pytest.raises(ValueError):
        chunking.chunk_text("x", chunk_tokens=10, overlap_tokens=10)


def test_a_long_unbroken_sentence_is_cut_by_words():
    text = " ".join(["word"] * 500)
    passages = chunking.chunk_text(text, chunk_tokens=100, overlap_tokens=10)
    assert len(passages) >= 5 and all(p.token_count <= 100 for p in passages)
    assert passages[0].heading == "" and passages[0].page is None


@override_settings(AIOS_KNOWLEDGE_EMBED_BATCH=4)
def test_a_second_delivery_changes_nothing_and_a_crash_is_taken_up_by_the_pickup(analyst, collection):
    document, _ = document_upload(actor=analyst, collection=collection, name="guide.md", data=long_markdown())
    # A worker claims it, writes the passages and two batches, then dies (its lease still runs).
    claimed = document_claim(document.pk)
    assert claimed is not None
    _, token = claimed
    from apps.knowledge.ingest import LostClaim, _finish, _parse_and_cut

    _parse_and_cut(document, token)
    document.refresh_from_db()
    first = Chunk.objects.filter(document=document).order_by("ordinal")[:8]
    from asgiref.sync import async_to_sync

    from apps.knowledge.embeddings import aembed_texts, endpoint_for

    vectors = async_to_sync(aembed_texts)(endpoint_for(collection), [c.text for c in first])
    for chunk, vector in zip(first, vectors, strict=True):
        Chunk.objects.filter(pk=chunk.pk).update(embedding=vector, dimensions=384, generation=collection.generation)
    Document.objects.filter(pk=document.pk).update(chunks_done=8)
    # While the dead worker's lease runs, another delivery finds the document taken and leaves it.
    assert document_ingest(document.pk) == "busy"
    assert documents_resume_due() == []
    # The lease lapses: the pickup lists it, and the next claim embeds only what is left.
    Document.objects.filter(pk=document.pk).update(lease_until=timezone.now() - timedelta(seconds=1))
    assert documents_resume_due() == [document.pk]
    assert Chunk.objects.filter(document=document, generation=1).count() == 8
    assert document_ingest(document.pk) == "ready"
    document.refresh_from_db()
    assert document.status == "ready" and document.chunks_done == document.chunks_total and document.attempts == 2
    assert not Chunk.objects.filter(document=document, embedding__isnull=True).exists()
    # The stale worker wakes up: its token is no longer current, so it writes nothing.
    with pytest.raises(LostClaim):
        _finish(document, token, status="failed", error="a stale worker's word")
    document.refresh_from_db()
    assert document.status == "ready" and not document.error
    assert document_ingest(document.pk) == "busy"  # finished documents are never claimed again


def test_re_embedding_moves_every_passage_to_the_new_generation(analyst, collection):
    document, _ = document_upload(actor=analyst, collection=collection, name="guide.md", data=long_markdown(2, 10))
    assert document_ingest(document.pk) == "ready"
    before = dict(Chunk.objects.filter(document=document).values_list("pk", "generation"))
    assert collection_reindex(actor=analyst, collection=collection) == 1
    document.refresh_from_db()
    assert document.status == "embedding" and document.chunks_done == 0
    assert document_ingest(document.pk) == "ready"
    after = dict(Chunk.objects.filter(document=document).values_list("pk", "generation"))
    assert after.keys() == before.keys() and set(after.values()) == {2}
    # Re-cutting replaces the passages.
    collection.refresh_from_db()
    collection.chunk_tokens, collection.chunk_overlap = 64, 8
    collection.save()
    collection_reindex(actor=analyst, collection=collection, rechunk=True)
    assert document_ingest(document.pk) == "ready"
    assert Chunk.objects.filter(document=document).count() > len(before)
    assert not Chunk.objects.filter(pk__in=before.keys()).exists()


def test_unreadable_documents_fail_naming_the_document(analyst, collection):
    # Passes the upload's format check (a text file), but holds nothing but blank lines.
    document, _ = document_upload(actor=analyst, collection=collection, name="blank.txt", data=b"\n\n   \n")
    assert document_ingest(document.pk) == "failed"
    document.refresh_from_db()
    assert document.status == "failed" and "blank.txt" in document.error


@override_settings(AIOS_KNOWLEDGE_EMBEDDINGS_URL="http://127.0.0.1:9")
def test_an_unreachable_embeddings_server_is_retried_then_given_up(analyst, collection):
    document, _ = document_upload(actor=analyst, collection=collection, name="a.md", data=b"# A\n\nSome text.")
    assert document_ingest(document.pk) == "retry"
    document.refresh_from_db()
    assert document.status == "embedding" and "could not be embedded yet" in document.error
    assert document.lease_until > timezone.now()
    outcomes = []
    while len(outcomes) < 10 and (not outcomes or outcomes[-1] == "retry"):
        Document.objects.filter(pk=document.pk).update(lease_until=timezone.now() - timedelta(seconds=1))
        outcomes.append(document_ingest(document.pk))
    outcome = outcomes[-1]
    assert outcomes == ["retry"] * 3 + ["failed"]  # MAX_ATTEMPTS claims in all, with the first above
    document.refresh_from_db()
    assert outcome == "failed" and document.status == "failed" and "gave up" in document.error.lower()
