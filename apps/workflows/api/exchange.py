"""The exchange format over REST: export a workflow file, import one (or check it with a dry run), and the
file's JSON Schema for editors. The format and its rules live in apps/workflows/exchange.py."""

from __future__ import annotations

import json
from typing import Any

import yaml
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.decorators import api_view, parser_classes, renderer_classes
from rest_framework.parsers import BaseParser, JSONParser, MultiPartParser
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from apps.core.exceptions import ValidationFailed
from apps.workflows.diff import diff_text
from apps.workflows.exchange import (
    MAX_DOCUMENT_BYTES,
    ImportProblems,
    ImportResult,
    Problem,
    document_schema,
    document_text_from_bytes,
    workflow_export,
    workflow_import,
)
from apps.workflows.selectors import workflow_get_for_user


class YamlTextParser(BaseParser):
    """A raw YAML (or JSON) file as the body: yields its bytes, reading one byte past the size limit so a
    larger body is refused with a clear message without being read whole."""

    media_type = "application/yaml"

    # DRF hands whatever a parser returns to the view as `request.data`; for a file, that is its bytes.
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> bytes:  # type: ignore[override]
        data: bytes = stream.read(MAX_DOCUMENT_BYTES + 1) if stream is not None else b""
        return data


class TextYamlParser(YamlTextParser):
    media_type = "text/yaml"


class LegacyYamlParser(YamlTextParser):
    media_type = "application/x-yaml"


class YamlRenderer(BaseRenderer):
    """Lets a client ask for YAML (Accept: text/yaml) without a 406; errors are rendered as YAML then."""

    media_type = "text/yaml"
    format = "yaml"
    charset = "utf-8"

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        text = data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
        return text.encode()


class ApplicationYamlRenderer(YamlRenderer):
    media_type = "application/yaml"


_ERROR = inline_serializer("ExchangeError", fields={"detail": serializers.CharField()})
_REFUSAL = inline_serializer(
    "ImportRefusal",
    fields={
        "detail": serializers.CharField(),
        "problems": inline_serializer(
            "ImportProblem",
            fields={
                "line": serializers.IntegerField(allow_null=True, help_text="1-based; null when unknown."),
                "path": serializers.CharField(help_text='Dotted, e.g. "spec.graph.steps.2.type"; "" for the file.'),
                "message": serializers.CharField(),
            },
            many=True,
            required=False,
        ),
        # A request whose options (`into`, `dry_run`, `document`) are invalid never reaches the file: it is
        # refused field by field, in the same {detail, fields} shape as the rest of the workflow API.
        "fields": serializers.DictField(
            child=serializers.ListField(child=serializers.CharField()),
            required=False,
            help_text="Each field's messages.",
        ),
    },
)


class ImportJsonSerializer(serializers.Serializer):
    document = serializers.JSONField(help_text="The workflow file as text (YAML or JSON), or as a JSON object.")
    into = serializers.SlugField(
        required=False, allow_blank=True, allow_null=True, help_text="Import into this workflow's draft."
    )
    dry_run = serializers.BooleanField(default=False, help_text="Check and show the diff; change nothing.")


class ImportUploadSerializer(serializers.Serializer):
    file = serializers.FileField()
    into = serializers.SlugField(required=False, allow_blank=True)
    dry_run = serializers.BooleanField(default=False)


class ImportOptionsSerializer(serializers.Serializer):
    into = serializers.SlugField(required=False, allow_blank=True)
    dry_run = serializers.BooleanField(default=False)


class ImportResultSerializer(serializers.Serializer):
    workflow = serializers.CharField(
        allow_null=True, help_text="The target's slug; null on a dry run that would create."
    )
    created = serializers.BooleanField(help_text="A new workflow was (or, on a dry run, would be) created.")
    dry_run = serializers.BooleanField()
    draft_revision = serializers.IntegerField(allow_null=True, help_text="The draft's revision; null on a dry run.")
    diff = inline_serializer(
        "ImportDiff",
        fields={
            "base": serializers.CharField(help_text="What the file was compared with."),
            "summary": serializers.CharField(),
            "text": serializers.CharField(),
        },
    )
    missing = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        help_text="Requirements this instance lacks, by kind (model_endpoints, queues, workflows).",
    )
    checksum = serializers.CharField()


@extend_schema(
    operation_id="workflow_export",
    parameters=[
        OpenApiParameter("version", int, description="A published version; default: the draft, else the newest.")
    ],
    responses={
        # The body is YAML text, but what it encodes (and what a client that parses it gets) is the document
        # object: described as an object, not a string, so the schema matches the parsed answer.
        (200, "text/yaml"): OpenApiResponse(
            OpenApiTypes.OBJECT, description="The workflow file (apiVersion aios/v1), as a YAML download."
        ),
        400: OpenApiResponse(_ERROR, description="`version` is not a number."),
        404: OpenApiResponse(_ERROR, description="No such workflow (or not visible to you), or no such version."),
    },
)
@api_view(["GET"])
@renderer_classes([JSONRenderer, YamlRenderer, ApplicationYamlRenderer])
def workflow_export_view(request: Request, slug: str) -> HttpResponse:
    """Download a workflow's file (`<slug>.aios.yaml`): published `version`, else the draft, else the newest
    published version. Audited."""
    workflow = workflow_get_for_user(request.user, slug=slug)
    raw = request.query_params.get("version")
    if raw is not None and not (raw.isascii() and raw.isdigit()):
        # {detail, fields}, as the schema documents every refusal of this API (a bare field map has no detail).
        raise ValidationFailed("A version number, e.g. 3.", fields={"version": ["A version number, e.g. 3."]})
    text = workflow_export(
        actor=request.user,  # type: ignore[arg-type]
        workflow=workflow,
        version_number=int(raw) if raw is not None else None,
    )
    response = HttpResponse(text, content_type="text/yaml; charset=utf-8")
    # Slugs are ASCII letters, digits, "-" and "_" (SlugField), so the file name needs no quoting rules.
    response["Content-Disposition"] = f'attachment; filename="{workflow.slug}.aios.yaml"'
    return response


@extend_schema(
    operation_id="workflow_import",
    request={
        "multipart/form-data": ImportUploadSerializer,
        "application/json": ImportJsonSerializer,
        "application/yaml": OpenApiTypes.STR,
    },
    parameters=[
        OpenApiParameter("into", str, description="With a raw YAML body: import into this workflow's draft."),
        OpenApiParameter("dry_run", bool, description="With a raw YAML body: check only, change nothing."),
    ],
    responses={
        201: OpenApiResponse(ImportResultSerializer, description="A workflow was created with the file as its draft."),
        200: OpenApiResponse(ImportResultSerializer, description="The draft was overwritten, or a dry run."),
        400: OpenApiResponse(_REFUSAL, description="The file was refused; every problem with its line and path."),
        403: OpenApiResponse(_ERROR, description="You may not change the target or create workflows."),
        404: OpenApiResponse(_ERROR, description="`into` names no workflow you may see."),
    },
)
@api_view(["POST"])
@parser_classes([JSONParser, MultiPartParser, YamlTextParser, TextYamlParser, LegacyYamlParser])
def workflow_import_view(request: Request) -> Response:
    """Import a workflow file as a draft (never published): into `into`, else the workflow with the file's
    slug, else a new workflow. The file is a `file` upload, a raw YAML body, or JSON `{"document": ...}`."""
    text, options = _import_request(request)
    target = workflow_get_for_user(request.user, slug=options["into"]) if options.get("into") else None
    result = workflow_import(
        actor=request.user,  # type: ignore[arg-type]
        text=text,
        workflow=target,
        dry_run=options["dry_run"],
    )
    created = result.created and not options["dry_run"]
    return Response(
        _result_json(result, dry_run=options["dry_run"]),
        status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
    )


@extend_schema(
    operation_id="workflow_document_schema",
    responses={200: OpenApiResponse(OpenApiTypes.OBJECT, description="A JSON Schema, draft 2020-12.")},
)
@api_view(["GET"])
@renderer_classes([JSONRenderer])
def workflow_document_schema_view(request: Request) -> Response:
    """The JSON Schema of the workflow file (apiVersion aios/v1), with each step type's config schema."""
    return Response(document_schema())


def _import_request(request: Request) -> tuple[str, dict[str, Any]]:
    """(file text, {"into", "dry_run"}) from any of the three request shapes; ImportProblems when there is no
    file or it is too large or not UTF-8."""
    data = request.data
    if isinstance(data, bytes):
        return document_text_from_bytes(data), _options(ImportOptionsSerializer, request.query_params)
    if "file" in request.FILES:
        options = _options(ImportOptionsSerializer, data)
        return document_text_from_bytes(request.FILES["file"].read(MAX_DOCUMENT_BYTES + 1)), options
    if isinstance(data, dict) and "document" in data:
        body = ImportJsonSerializer(data=data)
        if not body.is_valid():
            raise ValidationFailed("Check the fields listed.", fields=dict(body.errors))
        document = body.validated_data["document"]
        if isinstance(document, dict):
            # A document sent as a JSON object is the same document: JSON is YAML.
            document = json.dumps(document, ensure_ascii=False)
        if not isinstance(document, str):
            raise ImportProblems([_no_file("`document` must be the file's text or a JSON object.")])
        return document, {"into": body.validated_data.get("into") or "", "dry_run": body.validated_data["dry_run"]}
    raise ImportProblems(
        [
            _no_file(
                "Send the workflow file as a `file` upload, a raw body with Content-Type application/yaml, "
                'or JSON {"document": "..."}.'
            )
        ]
    )


def _no_file(message: str) -> Problem:
    return {"line": None, "path": "", "message": message}


def _options(serializer_class: type[serializers.Serializer], data: Any) -> dict[str, Any]:
    body = serializer_class(data=data)
    if not body.is_valid():
        raise ValidationFailed("Check the fields listed.", fields=dict(body.errors))
    return {"into": body.validated_data.get("into", ""), "dry_run": body.validated_data["dry_run"]}


def _result_json(result: ImportResult, *, dry_run: bool) -> dict[str, Any]:
    return {
        "workflow": result.workflow.slug if result.workflow is not None else None,
        "created": result.created,
        "dry_run": dry_run,
        "draft_revision": result.draft.revision if result.draft is not None else None,
        "diff": {"base": result.diff_base, "summary": result.diff.summary(), "text": diff_text(result.diff)},
        "missing": result.missing,
        "checksum": result.checksum,
    }
