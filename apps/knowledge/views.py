"""Pages of the knowledge app: collections, a collection's documents with live progress and the upload form,
settings (with re-embedding), deletion with confirmation, and a search page to try queries."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from apps.accounts.models import Team, User
from apps.core.exceptions import ApplicationError, ValidationFailed
from apps.inference.errors import InferenceError
from apps.inference.models import ModelEndpoint
from apps.knowledge.limits import MAX_UPLOAD_BYTES, accept_attribute, limits_sentence
from apps.knowledge.models import Collection
from apps.knowledge.parsing import too_big_message
from apps.knowledge.rules import teams_for_new_collection, user_manages_collection, user_may_create_collection
from apps.knowledge.search import MAX_TOP_K, MODES, collections_search, highlight_segments
from apps.knowledge.selectors import collection_get_for_user, collection_list_for_user, document_get, document_list
from apps.knowledge.services import (
    collection_create,
    collection_delete,
    collection_reindex,
    collection_update,
    document_delete,
    document_upload,
)


def _user(request: HttpRequest) -> User:
    assert isinstance(request.user, User)
    return request.user


def _int(value: str | None, default: int) -> int:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return default


def _field_errors(error: ApplicationError) -> dict[str, list[str]]:
    if isinstance(error, ValidationFailed):
        return error.fields
    return {"general": [error.message]}


@login_required
@require_http_methods(["GET", "POST"])
def collection_list(request: HttpRequest) -> HttpResponse:
    """The collections a person may see; those who may create one get the form (POST creates)."""
    user = _user(request)
    can_create = user_may_create_collection(user)
    values: dict[str, str] = {}
    errors: dict[str, list[str]] = {}
    if request.method == "POST":
        if not can_create:
            raise PermissionDenied("Only analysts and admins create collections.")
        values = {key: request.POST.get(key, "") for key in ("name", "title", "description", "team")}
        team = teams_for_new_collection(user).filter(pk=_int(values["team"], 0)).first()
        if team is None:
            errors = {"team": ["Choose one of your teams."]}
        else:
            try:
                collection = collection_create(
                    actor=user, name=values["name"], title=values["title"], description=values["description"], team=team
                )
            except ApplicationError as error:
                errors = _field_errors(error)
            else:
                messages.success(request, f'Created "{collection.title}". Upload its first documents below.')
                return redirect("knowledge:detail", name=collection.name)
    return render(
        request,
        "knowledge/collection_list.html",
        {
            "collections": collection_list_for_user(user),
            "can_create": can_create,
            "teams": teams_for_new_collection(user) if can_create else Team.objects.none(),
            "values": values,
            "errors": errors,
        },
        status=400 if errors else 200,
    )


def _detail_context(user: User, collection: Collection) -> dict[str, Any]:
    documents = list(document_list(collection))
    return {
        "collection": collection,
        "documents": documents,
        "busy": any(not document.is_final for document in documents),
        "can_manage": user_manages_collection(user, collection),
        "limits": limits_sentence(),
        "accept": accept_attribute(),
        "max_bytes": MAX_UPLOAD_BYTES,
    }


@login_required
def collection_detail(request: HttpRequest, name: str) -> HttpResponse:
    """A collection's documents with their status and progress, and (for its managers) the upload form."""
    user = _user(request)
    collection = collection_get_for_user(user, name)
    return render(request, "knowledge/collection_detail.html", _detail_context(user, collection))


@login_required
def document_table(request: HttpRequest, name: str) -> HttpResponse:
    """The documents table alone: what the page polls while documents are being read and embedded."""
    user = _user(request)
    collection = collection_get_for_user(user, name)
    return render(request, "knowledge/_documents.html", _detail_context(user, collection))


@login_required
@require_POST
def document_upload_view(request: HttpRequest, name: str) -> HttpResponse:
    """Upload one or more files (managers only); each is refused or queued on its own."""
    user = _user(request)
    collection = collection_get_for_user(user, name)
    if not user_manages_collection(user, collection):
        raise PermissionDenied(f'Only the managers of "{collection.name}" upload documents.')
    files = request.FILES.getlist("files")
    metadata: dict[str, Any] = {}
    raw_metadata = request.POST.get("metadata", "").strip()
    problems: list[str] = []
    if raw_metadata:
        try:
            metadata = json.loads(raw_metadata)
        except json.JSONDecodeError as error:
            problems.append(f"The metadata is not valid JSON ({error.msg}); nothing was uploaded.")
    if not files:
        problems.append("Choose at least one file to upload.")
    added: list[str] = []
    if not problems:
        for upload in files:
            if upload.size is not None and upload.size > MAX_UPLOAD_BYTES:
                problems.append(too_big_message(upload.name or "file", upload.size))
                continue
            try:
                document, created = document_upload(
                    actor=user,
                    collection=collection,
                    name=upload.name or "document",
                    data=upload.read(),
                    content_type=upload.content_type,
                    metadata=metadata,
                )
            except ApplicationError as error:
                problems.extend(message for messages_ in _field_errors(error).values() for message in messages_)
            else:
                added.append(document.name if created else f"{document.name} (already in the collection)")
    if added:
        messages.success(request, f"Added {', '.join(added)}.")
    for problem in problems:
        messages.error(request, problem)
    return redirect("knowledge:detail", name=collection.name)


@login_required
@require_http_methods(["GET", "POST"])
def document_delete_view(request: HttpRequest, name: str, document_id: int) -> HttpResponse:
    """Confirm (GET), then delete a document and its passages (POST); managers only."""
    user = _user(request)
    collection = collection_get_for_user(user, name)
    document = document_get(collection, document_id)
    if not user_manages_collection(user, collection):
        raise PermissionDenied(f'Only the managers of "{collection.name}" delete documents.')
    if request.method == "POST":
        document_delete(actor=user, document=document)
        messages.success(request, f'Deleted "{document.name}" and its {document.chunks_total} passages.')
        return redirect("knowledge:detail", name=collection.name)
    return render(request, "knowledge/document_delete.html", {"collection": collection, "document": document})


def _embedding_endpoints() -> list[ModelEndpoint]:
    return list(ModelEndpoint.objects.filter(kind=ModelEndpoint.Kind.TEI, enabled=True).order_by("name"))


@login_required
@require_http_methods(["GET", "POST"])
def collection_settings(request: HttpRequest, name: str) -> HttpResponse:
    """Title, description, chunking and the embeddings model; a model change asks to re-embed (managers)."""
    user = _user(request)
    collection = collection_get_for_user(user, name)
    if not user_manages_collection(user, collection):
        raise PermissionDenied(f'Only the managers of "{collection.name}" change its settings.')
    endpoints = _embedding_endpoints()
    errors: dict[str, list[str]] = {}
    values = {
        "title": collection.title,
        "description": collection.description,
        "chunk_tokens": str(collection.chunk_tokens),
        "chunk_overlap": str(collection.chunk_overlap),
        "endpoint": str(collection.endpoint_id or ""),
    }
    needs_confirmation = False
    if request.method == "POST":
        values = {key: request.POST.get(key, "") for key in values}
        chosen = next((e for e in endpoints if str(e.pk) == values["endpoint"]), None)
        if values["endpoint"] and chosen is None:
            errors["endpoint"] = ["Choose one of the embeddings endpoints listed."]
        else:
            try:
                collection_update(
                    actor=user,
                    collection=collection,
                    title=values["title"],
                    description=values["description"],
                    chunk_tokens=_int(values["chunk_tokens"], -1),
                    chunk_overlap=_int(values["chunk_overlap"], -1),
                    endpoint=chosen,
                    reembed="reembed" in request.POST,
                )
            except ApplicationError as error:
                errors = _field_errors(error)
                needs_confirmation = "confirm re-embedding" in error.message
            else:
                messages.success(request, "Saved the settings.")
                return redirect("knowledge:settings", name=collection.name)
    return render(
        request,
        "knowledge/collection_settings.html",
        {
            "collection": collection,
            "endpoints": endpoints,
            "values": values,
            "errors": errors,
            "needs_confirmation": needs_confirmation,
            "documents": document_list(collection),
        },
        status=400 if errors else 200,
    )


@login_required
@require_POST
def collection_reindex_view(request: HttpRequest, name: str) -> HttpResponse:
    """Re-embed every passage, or cut every document again and re-embed (managers)."""
    user = _user(request)
    collection = collection_get_for_user(user, name)
    if not user_manages_collection(user, collection):
        raise PermissionDenied(f'Only the managers of "{collection.name}" re-embed it.')
    rechunk = request.POST.get("rechunk") == "1"
    count = collection_reindex(actor=user, collection=collection, rechunk=rechunk)
    what = "Cutting and embedding" if rechunk else "Re-embedding"
    messages.success(request, f"{what} {count} document{'s' if count != 1 else ''} again; progress is shown below.")
    return redirect("knowledge:detail", name=collection.name)


@login_required
@require_http_methods(["GET", "POST"])
def collection_delete_view(request: HttpRequest, name: str) -> HttpResponse:
    """Confirm by typing the name (GET shows the consequences), then delete everything (POST; managers)."""
    user = _user(request)
    collection = collection_get_for_user(user, name)
    if not user_manages_collection(user, collection):
        raise PermissionDenied(f'Only the managers of "{collection.name}" delete it.')
    error = ""
    if request.method == "POST":
        if request.POST.get("confirm_name", "").strip() == collection.name:
            collection_delete(actor=user, collection=collection)
            messages.success(request, f'Deleted the collection "{collection.name}" with its documents.')
            return redirect("knowledge:collections")
        error = f'Type "{collection.name}" to confirm.'
    return render(
        request,
        "knowledge/collection_delete.html",
        {"collection": collection, "document_count": document_list(collection).count(), "error": error},
        status=400 if error else 200,
    )


@login_required
def collection_search_view(request: HttpRequest, name: str) -> HttpResponse:
    """Try a query against the collection: mode, top k, and each passage with its document, page and score."""
    user = _user(request)
    collection = collection_get_for_user(user, name)
    query = request.GET.get("q", "").strip()
    mode = request.GET.get("mode", "hybrid")
    mode = mode if mode in MODES else "hybrid"
    top_k = min(MAX_TOP_K, max(1, _int(request.GET.get("top_k"), 5)))
    results: list[dict[str, Any]] = []
    error = ""
    if query:
        try:
            passages = collections_search([collection], query, top_k=top_k, mode=mode)
        except (ValueError, InferenceError, ApplicationError) as problem:
            error = str(getattr(problem, "message", "") or problem)
        else:
            results = [{**passage, "segments": highlight_segments(passage["text"], query)} for passage in passages]
    return render(
        request,
        "knowledge/collection_search.html",
        {
            "collection": collection,
            "query": query,
            "mode": mode,
            "modes": MODES,
            "top_k": top_k,
            "max_top_k": MAX_TOP_K,
            "results": results,
            "error": error,
            "searched": bool(query),
        },
    )
