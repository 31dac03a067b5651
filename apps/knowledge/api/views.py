"""The knowledge API: collections (list, create, read, change, delete, re-embed), their documents (list,
multipart upload, read with progress, delete) and search. It mirrors the pages and calls the same services and
selectors: 404 for a collection a person may not see, 403 for one she may see but not change."""

from __future__ import annotations

import json
from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.decorators import api_view, parser_classes
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from apps.accounts.models import Team, User
from apps.core.api import PAGE_PARAMETERS, page_schema, paged_response
from apps.core.exceptions import ApplicationError, Forbidden, ValidationFailed
from apps.inference.errors import InferenceError
from apps.inference.models import ModelEndpoint
from apps.knowledge.limits import MAX_UPLOAD_BYTES
from apps.knowledge.models import Collection, Document
from apps.knowledge.parsing import too_big_message
from apps.knowledge.rules import user_manages_collection
from apps.knowledge.search import MAX_TOP_K, MODES, collections_search
from apps.knowledge.selectors import collection_get_for_user, collection_list_for_user, document_get, document_list
from apps.knowledge.services import (
    collection_create,
    collection_delete,
    collection_reindex,
    collection_update,
    document_delete,
    document_upload,
)


class EmbeddingsUnavailable(ApplicationError):
    """The embeddings server did not answer a search's query."""

    status_code = 502


class CollectionSerializer(serializers.ModelSerializer):
    team: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    endpoint: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(slug_field="name", read_only=True)
    created_by: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(slug_field="username", read_only=True)
    documents = serializers.SerializerMethodField()

    class Meta:
        model = Collection
        fields = [
            "name",
            "title",
            "description",
            "team",
            "endpoint",
            "embedding_model",
            "dimensions",
            "generation",
            "chunk_tokens",
            "chunk_overlap",
            "documents",
            "created_by",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    def get_documents(self, obj: Collection) -> int:
        count = getattr(obj, "document_count", None)
        return int(count) if count is not None else obj.documents.count()


class CollectionCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=64)
    title = serializers.CharField(max_length=150)
    description = serializers.CharField(required=False, allow_blank=True, default="")
    team = serializers.SlugField(help_text="The owning team's slug.")
    endpoint = serializers.CharField(
        required=False, allow_blank=True, default="", help_text="A TEI endpoint's name; empty for the default."
    )
    chunk_tokens = serializers.IntegerField(required=False, default=180)
    chunk_overlap = serializers.IntegerField(required=False, default=30)


class CollectionUpdateSerializer(serializers.Serializer):
    title = serializers.CharField(max_length=150, required=False)
    description = serializers.CharField(required=False, allow_blank=True)
    chunk_tokens = serializers.IntegerField(required=False)
    chunk_overlap = serializers.IntegerField(required=False)
    endpoint = serializers.CharField(required=False, allow_blank=True, help_text="Empty: the default server.")
    reembed = serializers.BooleanField(required=False, default=False)


class DocumentSerializer(serializers.ModelSerializer):
    uploaded_by: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(slug_field="username", read_only=True)
    progress = serializers.IntegerField(source="progress_percent", read_only=True)

    class Meta:
        model = Document
        fields = [
            "id",
            "name",
            "content_type",
            "format",
            "size",
            "sha256",
            "metadata",
            "status",
            "chunks_done",
            "chunks_total",
            "progress",
            "pages",
            "error",
            "uploaded_by",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields


class DocumentUploadSerializer(serializers.Serializer):
    file = serializers.FileField(help_text=f"At most {MAX_UPLOAD_BYTES // 2**20} MB.")
    metadata = serializers.CharField(required=False, allow_blank=True, default="", help_text="A JSON object.")


class SearchSerializer(serializers.Serializer):
    q = serializers.CharField(max_length=2000)
    mode = serializers.ChoiceField(choices=list(MODES), default="hybrid")
    top_k = serializers.IntegerField(min_value=1, max_value=MAX_TOP_K, default=5)
    min_score = serializers.FloatField(required=False, allow_null=True, default=None)
    filters = serializers.DictField(required=False, default=dict)


def _user(request: Request) -> User:
    assert isinstance(request.user, User)
    return request.user


def _endpoint(name: str) -> ModelEndpoint | None:
    if not name:
        return None
    endpoint = ModelEndpoint.objects.filter(name=name).first()
    if endpoint is None:
        raise ValidationFailed("Unknown endpoint.", fields={"endpoint": [f'There is no endpoint "{name}".']})
    return endpoint


@extend_schema(
    methods=["GET"],
    operation_id="collections_list",
    parameters=PAGE_PARAMETERS,
    responses={200: page_schema(CollectionSerializer(many=True), "PaginatedCollectionList")},
)
@extend_schema(methods=["POST"], request=CollectionCreateSerializer, responses={201: CollectionSerializer})
@api_view(["GET", "POST"])
def collection_list_view(request: Request) -> Response:
    """GET: the collections you may see, by name, a page at a time. POST: create one (analysts for their teams,
    admins for any)."""
    user = _user(request)
    if request.method == "GET":
        return paged_response(
            request, collection_list_for_user(user), lambda rows: CollectionSerializer(rows, many=True).data
        )
    body = CollectionCreateSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    data = body.validated_data
    team = Team.objects.filter(slug=data["team"]).first()
    if team is None:
        raise ValidationFailed("Unknown team.", fields={"team": [f'There is no team "{data["team"]}".']})
    collection = collection_create(
        actor=user,
        name=data["name"],
        title=data["title"],
        description=data["description"],
        team=team,
        endpoint=_endpoint(data["endpoint"]),
        chunk_tokens=data["chunk_tokens"],
        chunk_overlap=data["chunk_overlap"],
    )
    return Response(CollectionSerializer(collection).data, status=status.HTTP_201_CREATED)


@extend_schema(request=CollectionUpdateSerializer, responses=CollectionSerializer)
@api_view(["GET", "PATCH", "DELETE"])
def collection_detail_view(request: Request, name: str) -> Response:
    """GET: one collection. PATCH: change its settings (a new endpoint needs `"reembed": true`). DELETE: it,
    its documents and passages. Changes are for its managers."""
    user = _user(request)
    collection = collection_get_for_user(user, name)
    if request.method == "GET":
        return Response(CollectionSerializer(collection).data)
    if request.method == "DELETE":
        collection_delete(actor=user, collection=collection)
        return Response(status=status.HTTP_204_NO_CONTENT)
    body = CollectionUpdateSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    data = body.validated_data
    collection = collection_update(
        actor=user,
        collection=collection,
        title=data.get("title"),
        description=data.get("description"),
        chunk_tokens=data.get("chunk_tokens"),
        chunk_overlap=data.get("chunk_overlap"),
        endpoint=_endpoint(data["endpoint"]) if "endpoint" in data else "keep",
        reembed=data["reembed"],
    )
    return Response(CollectionSerializer(collection).data)


@extend_schema(request=None, responses={202: None})
@api_view(["POST"])
def collection_reindex_view(request: Request, name: str) -> Response:
    """Embed every passage again (`?rechunk=1`: cut every document again first). Managers only."""
    user = _user(request)
    collection = collection_get_for_user(user, name)
    count = collection_reindex(actor=user, collection=collection, rechunk=request.query_params.get("rechunk") == "1")
    return Response({"documents": count}, status=status.HTTP_202_ACCEPTED)


@extend_schema(
    methods=["GET"],
    parameters=PAGE_PARAMETERS,
    responses={200: page_schema(DocumentSerializer(many=True), "PaginatedCollectionDocumentList")},
)
@extend_schema(
    methods=["POST"],
    request={"multipart/form-data": DocumentUploadSerializer},
    responses={200: DocumentSerializer, 201: DocumentSerializer},
)
@api_view(["GET", "POST"])
@parser_classes([MultiPartParser, FormParser, JSONParser])
def document_list_view(request: Request, name: str) -> Response:
    """GET: the collection's documents with status and progress, newest first, a page at a time. POST
    (multipart, `file`, optional `metadata` JSON): upload one; 201 when new, 200 with the existing document for
    a file already there, 400 with the limit for a format AIOS does not read or a file over the size limit
    (nothing is stored)."""
    user = _user(request)
    collection = collection_get_for_user(user, name)
    if request.method == "GET":
        return paged_response(request, document_list(collection), lambda rows: DocumentSerializer(rows, many=True).data)
    if not user_manages_collection(user, collection):
        raise Forbidden(f'Only the managers of "{collection.name}" upload documents.')
    body = DocumentUploadSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    upload = body.validated_data["file"]
    if upload.size > MAX_UPLOAD_BYTES:
        message = too_big_message(upload.name, upload.size)
        raise ValidationFailed(message, fields={"file": [message]})
    metadata: Any = {}
    if body.validated_data["metadata"]:
        try:
            metadata = json.loads(body.validated_data["metadata"])
        except json.JSONDecodeError:
            raise ValidationFailed(
                "The metadata is not JSON.", fields={"metadata": ["The metadata is not valid JSON."]}
            ) from None
    document, created = document_upload(
        actor=user,
        collection=collection,
        name=upload.name,
        data=upload.read(),
        content_type=upload.content_type,
        metadata=metadata,
    )
    return Response(
        DocumentSerializer(document).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
    )


@extend_schema(responses=DocumentSerializer, operation_id="collections_document_retrieve", methods=["GET"])
@extend_schema(responses={204: None}, operation_id="collections_document_destroy", methods=["DELETE"])
@api_view(["GET", "DELETE"])
def document_detail_view(request: Request, name: str, document_id: int) -> Response:
    """GET: one document with its progress. DELETE: it and its passages (managers)."""
    user = _user(request)
    collection = collection_get_for_user(user, name)
    document = document_get(collection, document_id)
    if request.method == "DELETE":
        document_delete(actor=user, document=document)
        return Response(status=status.HTTP_204_NO_CONTENT)
    return Response(DocumentSerializer(document).data)


@extend_schema(
    request=SearchSerializer,
    parameters=[OpenApiParameter("q", str), OpenApiParameter("mode", str), OpenApiParameter("top_k", int)],
    responses={200: None},
)
@api_view(["GET", "POST"])
def collection_search_view(request: Request, name: str) -> Response:
    """Search the collection (GET with `q`, or POST a JSON body): `{"query", "mode", "passages": [...]}` with
    chunk id, text, document name and id, page, heading, score and collection, best first."""
    user = _user(request)
    collection = collection_get_for_user(user, name)
    body = SearchSerializer(data=request.query_params if request.method == "GET" else request.data)
    body.is_valid(raise_exception=True)
    data = body.validated_data
    try:
        passages = collections_search(
            [collection],
            data["q"],
            top_k=data["top_k"],
            min_score=data["min_score"],
            filters=data["filters"],
            mode=data["mode"],
        )
    except ValueError as error:
        raise ValidationFailed(str(error), fields={"q": [str(error)]}) from None
    except InferenceError as error:
        raise EmbeddingsUnavailable(f"The embeddings server failed: {error}") from None
    return Response({"query": data["q"], "mode": data["mode"], "passages": passages})
