"""Writes about knowledge collections and documents; every change audited in its transaction, every ingest
rung on commit.

Interfaces find the collection through a selector first (404 for what a person may not see); these services
then refuse what she may see but not change (403, `Forbidden`).
"""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from guardian.models import GroupObjectPermission, UserObjectPermission
from guardian.shortcuts import assign_perm

from apps.accounts.models import Team, User
from apps.audit.services import audit_record
from apps.core.exceptions import Conflict, Forbidden, ValidationFailed
from apps.inference.models import ModelEndpoint
from apps.knowledge.embeddings import model_label_for
from apps.knowledge.limits import upload_refusal
from apps.knowledge.models import Chunk, Collection, Document
from apps.knowledge.rules import (
    MANAGE,
    USE,
    VIEW,
    teams_for_new_collection,
    user_manages_collection,
    user_may_create_collection,
)
from apps.knowledge.tasks import ingest_enqueue

NAME_PATTERN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")
MIN_CHUNK_TOKENS, MAX_CHUNK_TOKENS = 32, 512
MAX_METADATA_KEYS = 50


def _refuse(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(message, fields={field: [message]})


def _check_chunking(chunk_tokens: int, chunk_overlap: int) -> None:
    if not MIN_CHUNK_TOKENS <= chunk_tokens <= MAX_CHUNK_TOKENS:
        raise _refuse(
            "chunk_tokens", f"Passages are {MIN_CHUNK_TOKENS} to {MAX_CHUNK_TOKENS} tokens long; {chunk_tokens} is not."
        )
    if not 0 <= chunk_overlap <= chunk_tokens // 2:
        raise _refuse(
            "chunk_overlap", f"The overlap is 0 to half a passage ({chunk_tokens // 2} tokens); {chunk_overlap} is not."
        )


def _check_endpoint(endpoint: ModelEndpoint | None) -> None:
    if endpoint is None:
        return
    if endpoint.kind != ModelEndpoint.Kind.TEI:
        raise _refuse("endpoint", f'"{endpoint.name}" is not an embeddings endpoint (kind TEI).')
    if not endpoint.enabled:
        raise _refuse("endpoint", f'"{endpoint.name}" is disabled.')


def _require_manager(actor: User, collection: Collection) -> None:
    if not user_manages_collection(actor, collection):
        raise Forbidden(f'Only the managers of "{collection.name}" may change it.')


def _snapshot(collection: Collection) -> dict[str, Any]:
    data = {name: getattr(collection, name) for name in Collection.SETTINGS if name != "endpoint"}
    data["endpoint"] = collection.endpoint.name if collection.endpoint is not None else ""
    data["team"] = collection.team.slug
    return data


@transaction.atomic
def collection_create(
    *,
    actor: User,
    name: str,
    title: str,
    team: Team,
    description: str = "",
    endpoint: ModelEndpoint | None = None,
    chunk_tokens: int = 180,
    chunk_overlap: int = 30,
) -> Collection:
    """A new collection owned by `team`: the team's group may view and use it, its creator manages it.

    Refuses a name that is not a slug or is taken, a team the actor may not give it to, chunking out of range,
    and an endpoint that is not an enabled embeddings server."""
    if not user_may_create_collection(actor):
        raise Forbidden("Only analysts and admins create collections.")
    name = (name or "").strip()
    if not NAME_PATTERN.match(name):
        raise _refuse("name", "Use lower-case letters, digits and hyphens (e.g. support-kb), at most 64.")
    if Collection.objects.filter(name=name).exists():
        raise _refuse("name", f'There is already a collection named "{name}".')
    if not (title or "").strip():
        raise _refuse("title", "Give the collection a title.")
    if not teams_for_new_collection(actor).filter(pk=team.pk).exists():
        raise _refuse("team", f'You may not create collections for the team "{team.name}".')
    _check_chunking(chunk_tokens, chunk_overlap)
    _check_endpoint(endpoint)
    collection = Collection.objects.create(
        name=name,
        title=title.strip()[:150],
        description=(description or "").strip(),
        team=team,
        endpoint=endpoint,
        embedding_model=model_label_for(endpoint),
        chunk_tokens=chunk_tokens,
        chunk_overlap=chunk_overlap,
        created_by=actor,
    )
    for perm in (VIEW, USE):
        assign_perm(perm, team.group, collection)
    for perm in (VIEW, USE, MANAGE):
        assign_perm(perm, actor, collection)
    audit_record(actor=actor, verb="collection.created", target=collection, data=_snapshot(collection))
    return collection


def _documents_restart(collection: Collection, *, rechunk: bool) -> list[int]:
    """Send every document of the collection back through the ingest (re-embed, or re-cut and re-embed);
    the claim token moves on so a worker still busy with one stops at its next batch."""
    documents = Document.objects.filter(collection=collection).exclude(status=Document.Status.FAILED, chunks_total=0)
    ids = list(documents.values_list("pk", flat=True))
    fields: dict[str, Any] = {
        "chunks_done": 0,
        "lease_until": None,
        "attempts": 0,
        "error": "",
        "claim_token": F("claim_token") + 1,
        "updated_at": timezone.now(),
        "status": Document.Status.QUEUED if rechunk else Document.Status.EMBEDDING,
    }
    if rechunk:
        fields["chunks_total"] = 0
    Document.objects.filter(pk__in=ids).update(**fields)
    for document_id in ids:
        transaction.on_commit(functools.partial(ingest_enqueue, document_id))
    return ids


@transaction.atomic
def collection_update(
    *,
    actor: User,
    collection: Collection,
    title: str | None = None,
    description: str | None = None,
    chunk_tokens: int | None = None,
    chunk_overlap: int | None = None,
    endpoint: ModelEndpoint | None | str = "keep",
    reembed: bool = False,
) -> Collection:
    """Change a collection's settings. A new embeddings model (endpoint) makes every passage's vector stale:
    it is refused unless `reembed` (then the collection moves to a new generation and every document is
    embedded again, with progress). New chunking applies to documents uploaded afterwards (and to all of
    them with `collection_reindex(rechunk=True)`). Audited with the changed fields."""
    locked = Collection.objects.select_for_update(of=("self",)).select_related("team", "endpoint")
    collection = locked.get(pk=collection.pk)
    _require_manager(actor, collection)
    before = _snapshot(collection)
    if title is not None:
        if not title.strip():
            raise _refuse("title", "Give the collection a title.")
        collection.title = title.strip()[:150]
    if description is not None:
        collection.description = description.strip()
    tokens = collection.chunk_tokens if chunk_tokens is None else chunk_tokens
    overlap = collection.chunk_overlap if chunk_overlap is None else chunk_overlap
    _check_chunking(tokens, overlap)
    collection.chunk_tokens, collection.chunk_overlap = tokens, overlap
    model_changed = False
    if endpoint != "keep" and not isinstance(endpoint, str):
        new_id = endpoint.pk if endpoint is not None else None
        if new_id != collection.endpoint_id:
            _check_endpoint(endpoint)
            has_passages = Chunk.objects.filter(collection=collection).exists()
            if has_passages and not reembed:
                raise Conflict(
                    "Changing the embeddings model re-embeds every passage of the collection: confirm re-embedding."
                )
            collection.endpoint = endpoint
            collection.embedding_model = model_label_for(endpoint)
            collection.dimensions = None
            collection.generation += 1
            model_changed = True
    collection.save()
    after = _snapshot(collection)
    changed = {key: value for key, value in after.items() if before.get(key) != value}
    restarted: list[int] = []
    if model_changed:
        restarted = _documents_restart(collection, rechunk=False)
    audit_record(
        actor=actor,
        verb="collection.changed",
        target=collection,
        data={"fields": changed, "reembedding_documents": len(restarted)},
    )
    return collection


@transaction.atomic
def collection_reindex(*, actor: User, collection: Collection, rechunk: bool = False) -> int:
    """Embed every passage again (after the server's model was replaced under the same endpoint), or, with
    `rechunk`, cut every document again with the current chunking first. Returns the documents restarted."""
    collection = Collection.objects.select_for_update().get(pk=collection.pk)
    _require_manager(actor, collection)
    collection.generation += 1
    collection.dimensions = None
    collection.save(update_fields=["generation", "dimensions", "updated_at"])
    restarted = _documents_restart(collection, rechunk=rechunk)
    audit_record(
        actor=actor,
        verb="collection.reprocessed" if rechunk else "collection.reembedded",
        target=collection,
        data={"documents": len(restarted), "generation": collection.generation},
    )
    return len(restarted)


@transaction.atomic
def collection_delete(*, actor: User, collection: Collection) -> None:
    """Delete the collection with its documents and passages, and the permissions granted on it. Steps that
    name it fail at run time with a clear error, and publishing them is refused."""
    _require_manager(actor, collection)
    documents = Document.objects.filter(collection=collection).count()
    chunks = Chunk.objects.filter(collection=collection).count()
    audit_record(
        actor=actor,
        verb="collection.deleted",
        target=collection,
        data={"name": collection.name, "documents": documents, "chunks": chunks},
    )
    pk = str(collection.pk)
    Chunk.objects.filter(collection=collection).delete()
    collection.delete()
    # guardian's rows point at the object by a generic key, which no foreign key cleans up.
    UserObjectPermission.objects.filter(content_type__app_label="knowledge", object_pk=pk).delete()
    GroupObjectPermission.objects.filter(content_type__app_label="knowledge", object_pk=pk).delete()


def _clean_metadata(metadata: Any) -> dict[str, Any]:
    if metadata in (None, ""):
        return {}
    if not isinstance(metadata, dict):
        raise _refuse("metadata", "Metadata is a JSON object of names and values.")
    if len(metadata) > MAX_METADATA_KEYS:
        raise _refuse("metadata", f"At most {MAX_METADATA_KEYS} metadata names.")
    for key, value in metadata.items():
        if not isinstance(key, str) or not key or len(key) > 64 or key in ("document", "page", "section"):
            raise _refuse("metadata", f'"{key}" cannot be a metadata name (document, page and section are set).')
        if not isinstance(value, str | int | float | bool) or (isinstance(value, str) and len(value) > 500):
            raise _refuse("metadata", f'The value of "{key}" must be a short text, a number or true/false.')
    return dict(metadata)


def document_upload(
    *,
    actor: User,
    collection: Collection,
    name: str,
    data: bytes,
    content_type: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> tuple[Document, bool]:
    """Store a file in the collection and queue its ingest; returns (document, created). The same file (by
    SHA-256) again returns the document already there. A file of a format the parser does not read, or over
    its size limit, is refused with the limit, and nothing is stored."""
    _require_manager(actor, collection)
    name = (name or "").strip().replace("\x00", "")[:255] or "document"
    refusal = upload_refusal(name=name, content_type=content_type, data=data)
    if refusal:
        raise _refuse("file", refusal)
    cleaned = _clean_metadata(metadata)
    digest = hashlib.sha256(data).hexdigest()
    existing = Document.objects.filter(collection=collection, sha256=digest).first()
    if existing is not None:
        return existing, False
    try:
        with transaction.atomic():
            document = Document.objects.create(
                collection=collection,
                name=name,
                content_type=(content_type or "")[:100],
                size=len(data),
                sha256=digest,
                data=data,
                metadata=cleaned,
                uploaded_by=actor,
            )
            audit_record(
                actor=actor,
                verb="document.uploaded",
                target=collection,
                data={"document": name, "document_id": document.pk, "size": len(data), "sha256": digest},
            )
            transaction.on_commit(lambda: ingest_enqueue(document.pk))
    except IntegrityError:
        # The same file uploaded at the same moment by someone else: theirs is the document.
        return Document.objects.get(collection=collection, sha256=digest), False
    return document, True


@transaction.atomic
def document_delete(*, actor: User, document: Document) -> None:
    """Delete a document and its passages (a worker still ingesting it finds it gone and stops)."""
    _require_manager(actor, document.collection)
    audit_record(
        actor=actor,
        verb="document.deleted",
        target=document.collection,
        data={"document": document.name, "document_id": document.pk, "chunks": document.chunks_total},
    )
    document.delete()


@transaction.atomic
def collection_manager_grant(*, actor: User, collection: Collection, person: User) -> None:
    """Let `person` manage the collection too (and view and use it)."""
    _require_manager(actor, collection)
    for perm in (VIEW, USE, MANAGE):
        assign_perm(perm, person, collection)
    audit_record(actor=actor, verb="collection.manager_added", target=collection, data={"person": person.username})
