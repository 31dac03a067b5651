"""Ingesting a document: read it, cut it into passages, embed them in batches, with progress after each batch.

Postgres says what is due; Celery only rings the bell. `document_ingest` first claims the document with a
conditional update (a fresh lease and a new `claim_token`), and changes nothing unless it holds the current
token, so a second delivery of the same message, or a worker that lost its lease, never writes over the one
that owns it. Passages are written in one transaction, then embedded batch by batch; each batch commits its
vectors and the progress together, so a worker that dies mid-way leaves the passages and every finished batch
behind, and whoever claims the document next (the periodic pickup, `documents_resume_due`) embeds only what is
left. A collection whose model changed has a newer `generation`: the passages of an older one are embedded
again the same way.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import Any

from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from apps.audit.services import audit_record
from apps.core.exceptions import ApplicationError
from apps.inference.errors import InferenceError
from apps.knowledge import chunking, parsing
from apps.knowledge.embeddings import EmbeddingSizeError, aembed_texts, check_dimensions, endpoint_for, model_label_for
from apps.knowledge.models import Chunk, Collection, Document

# A document that failed this many claims (a parser that kills its worker, a server that never answers) is
# marked failed instead of being taken up again forever.
MAX_ATTEMPTS = 5
# A queued document whose message has not claimed it within this long is sent again by the pickup.
QUEUED_GRACE_SECONDS = 20

Status = Document.Status
ACTIVE = (Status.PARSING, Status.EMBEDDING)


def _due(now: Any) -> Q:
    """Documents a worker may claim now: queued ones, and started ones whose lease lapsed (or was cleared)."""
    return Q(status=Status.QUEUED) | Q(status__in=ACTIVE) & (Q(lease_until__isnull=True) | Q(lease_until__lt=now))


def document_claim(document_id: int) -> tuple[Document, int] | None:
    """Take the document for this worker: a new claim token and a fresh lease, by one conditional update.
    None when it is not due (another worker holds it, or it is finished)."""
    now = timezone.now()
    updated = (
        Document.objects.filter(pk=document_id)
        .filter(_due(now))
        .update(
            claim_token=F("claim_token") + 1,
            attempts=F("attempts") + 1,
            lease_until=now + timedelta(seconds=settings.AIOS_KNOWLEDGE_LEASE_SECONDS),
        )
    )
    if not updated:
        return None
    document = Document.objects.select_related("collection", "collection__endpoint").get(pk=document_id)
    return document, document.claim_token


class LostClaim(Exception):
    """Another worker took the document over (or it was deleted): stop without writing."""


def _held(document: Document, token: int) -> Document:
    """The document's row, locked, if this worker still holds it; LostClaim otherwise."""
    row = Document.objects.select_for_update().filter(pk=document.pk, claim_token=token).first()
    if row is None:
        raise LostClaim
    return row


def _lease() -> Any:
    return timezone.now() + timedelta(seconds=settings.AIOS_KNOWLEDGE_LEASE_SECONDS)


def _parse_and_cut(document: Document, token: int) -> None:
    """Read the file, cut it into passages and store them (replacing any from an earlier generation of the
    parse), then move to embedding. One transaction, so passages are all there or none are."""
    parsed = parsing.parse_document(bytes(document.data), filename=document.name, content_type=document.content_type)
    collection = document.collection
    passages = chunking.chunk_text(
        parsed.text,
        sections=parsed.sections,
        pages=parsed.pages,
        chunk_tokens=collection.chunk_tokens,
        overlap_tokens=collection.chunk_overlap,
    )
    if not passages:
        raise parsing.DocumentError(f'"{document.name}" has no text to search.')
    with transaction.atomic():
        row = _held(document, token)
        Chunk.objects.filter(document=row).delete()
        own = row.metadata if isinstance(row.metadata, dict) else {}
        Chunk.objects.bulk_create(
            Chunk(
                document=row,
                collection_id=row.collection_id,
                ordinal=ordinal,
                text=passage.text,
                heading=passage.heading[:500],
                page=passage.page,
                token_count=passage.token_count,
                metadata={
                    **own,
                    "document": row.name,
                    "page": passage.page,
                    "section": passage.heading,
                },
                generation=0,
            )
            for ordinal, passage in enumerate(passages)
        )
        Document.objects.filter(pk=row.pk).update(
            status=Status.EMBEDDING,
            format=str(getattr(parsed, "format", ""))[:20],
            pages=len(parsed.pages) or None,
            chunks_total=len(passages),
            chunks_done=0,
            error="",
            lease_until=_lease(),
            updated_at=timezone.now(),
        )


def _embed_remaining(document: Document, token: int) -> None:
    """Embed the passages not yet embedded under the collection's current generation, one batch per
    transaction, with the document's progress and lease moved on in the same commit."""
    batch_size = settings.AIOS_KNOWLEDGE_EMBED_BATCH
    while True:
        collection = Collection.objects.select_related("endpoint").get(pk=document.collection_id)
        generation = collection.generation
        batch = list(
            Chunk.objects.filter(document_id=document.pk, generation__lt=generation)
            .order_by("ordinal")
            .only("pk", "text", "heading")[:batch_size]
        )
        if not batch:
            return
        texts = [f"{chunk.heading}\n{chunk.text}" if chunk.heading else chunk.text for chunk in batch]
        vectors = async_to_sync(aembed_texts)(endpoint_for(collection), texts)
        if len(vectors) != len(batch):
            raise InferenceError(f"The embeddings server returned {len(vectors)} vectors for {len(batch)} passages.")
        size = check_dimensions(vectors)
        with transaction.atomic():
            _held(document, token)
            current = Collection.objects.select_for_update().get(pk=collection.pk)
            if current.generation != generation:
                continue  # the model changed meanwhile: these vectors are of the old one
            for chunk, vector in zip(batch, vectors, strict=True):
                chunk.embedding, chunk.dimensions, chunk.generation = vector, size, generation
            Chunk.objects.bulk_update(batch, ["embedding", "dimensions", "generation"])
            if current.dimensions != size or not current.embedding_model:
                Collection.objects.filter(pk=current.pk).update(
                    dimensions=size, embedding_model=current.embedding_model or model_label_for(current.endpoint)
                )
            done = Chunk.objects.filter(document_id=document.pk, generation=generation).count()
            Document.objects.filter(pk=document.pk).update(
                chunks_done=done, lease_until=_lease(), updated_at=timezone.now()
            )


def _finish(document: Document, token: int, *, status: str, error: str = "") -> None:
    with transaction.atomic():
        row = _held(document, token)
        Document.objects.filter(pk=row.pk).update(
            status=status, error=error[:2000], lease_until=None, updated_at=timezone.now()
        )
        audit_record(
            actor=None,
            verb="document.ready" if status == Status.READY else "document.failed",
            target=row.collection,
            data={"document": row.name, "document_id": row.pk, "chunks": row.chunks_total, "error": error[:500]},
        )


def _back_off(document: Document, token: int, message: str) -> bool:
    """A failure that may pass (the embeddings server overloaded or down): say so on the document and let the
    lease lapse a little later, for the pickup to try again; after MAX_ATTEMPTS claims, fail it (returns
    whether it gave up)."""
    with transaction.atomic():
        row = _held(document, token)
        if row.attempts >= MAX_ATTEMPTS:
            _finish(document, token, status=Status.FAILED, error=f"{message} (gave up after {row.attempts} tries)")
            return True
        delay = min(300, 5 * 2**row.attempts)
        Document.objects.filter(pk=row.pk).update(
            error=f"{message} Trying again shortly.",
            lease_until=timezone.now() + timedelta(seconds=delay),
            updated_at=timezone.now(),
        )
    return False


def document_ingest(document_id: int) -> str:
    """Claim, read, cut and embed one document; returns what happened ("ready", "failed", "retry", "busy" or
    "lost"). Safe to run twice, at once or one after the other (module docstring)."""
    claimed = document_claim(document_id)
    if claimed is None:
        return "busy"
    document, token = claimed
    try:
        if document.attempts > MAX_ATTEMPTS:
            _finish(document, token, status=Status.FAILED, error=f"Gave up after {MAX_ATTEMPTS} tries.")
            return "failed"
        if document.status in (Status.QUEUED, Status.PARSING) or not document.chunks_total:
            Document.objects.filter(pk=document.pk, claim_token=token).update(
                status=Status.PARSING, updated_at=timezone.now()
            )
            _parse_and_cut(document, token)
        _embed_remaining(document, token)
        _finish(document, token, status=Status.READY)
        return "ready"
    except LostClaim:
        return "lost"
    except parsing.DocumentError as error:
        message = str(getattr(error, "message", "") or error)
        if document.name not in message:
            message = f'"{document.name}": {message}'
        _finish_quietly(document, token, message)
        return "failed"
    except EmbeddingSizeError as error:
        _finish_quietly(document, token, f'"{document.name}": {error.message}')
        return "failed"
    except InferenceError as error:
        if not getattr(error, "retryable", True):
            _finish_quietly(document, token, f'"{document.name}" could not be embedded: {error}')
            return "failed"
        try:
            gave_up = _back_off(document, token, f'"{document.name}" could not be embedded yet: {error}.')
        except LostClaim:
            return "lost"
        return "failed" if gave_up else "retry"
    except ApplicationError as error:
        _finish_quietly(document, token, f'"{document.name}": {error.message}')
        return "failed"


def _finish_quietly(document: Document, token: int, message: str) -> None:
    with contextlib.suppress(LostClaim):
        _finish(document, token, status=Status.FAILED, error=message)


def documents_resume_due(*, limit: int = 100) -> list[int]:
    """The documents whose ingest is due and has no live worker: queued ones whose message seems lost, and
    started ones whose lease lapsed. The periodic pickup sends each a new message (claiming stays the task's)."""
    now = timezone.now()
    grace = now - timedelta(seconds=QUEUED_GRACE_SECONDS)
    due = Q(status=Status.QUEUED, updated_at__lt=grace) | Q(status__in=ACTIVE) & (
        Q(lease_until__lt=now) | Q(lease_until__isnull=True, updated_at__lt=grace)
    )
    return list(Document.objects.filter(due).order_by("updated_at").values_list("pk", flat=True)[:limit])
