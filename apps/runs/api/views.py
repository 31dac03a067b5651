from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action, api_view, parser_classes
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from apps.core.exceptions import ValidationFailed
from apps.runs.api.serializers import (
    CancelSerializer,
    DocumentSerializer,
    DocumentUploadSerializer,
    IncidentResolveSerializer,
    IncidentSerializer,
    InferenceCallSerializer,
    RestartSerializer,
    RunDetailSerializer,
    RunSerializer,
    RunStartSerializer,
)
from apps.runs.documents import MAX_BYTES, document_inputs_expand, document_store, too_big_message
from apps.runs.draft_tests import run_test_start
from apps.runs.models import Run
from apps.runs.selectors import (
    incident_get_for_user,
    inference_call_list_for_run,
    run_can_operate,
    run_diff,
    run_get_for_user,
    run_list_for_user,
)
from apps.runs.services import (
    incident_resolve,
    run_cancel,
    run_replay,
    run_restart,
    run_start,
    run_start_rate_check,
)
from apps.workflows.selectors import draft_sample_inputs, workflow_get_for_user, workflow_version_published_latest


class RunViewSet(viewsets.ReadOnlyModelViewSet):
    """Runs the caller may view; others are 404."""

    lookup_value_regex = r"\d+"

    def get_queryset(self) -> QuerySet[Run]:
        return run_list_for_user(self.request.user)

    def get_serializer_class(self) -> type[RunSerializer]:
        return RunDetailSerializer if self.action == "retrieve" else RunSerializer

    def get_object(self) -> Run:
        return run_get_for_user(self.request.user, run_id=int(self.kwargs["pk"]))

    def _operable(self) -> Run:
        run = self.get_object()
        if not run_can_operate(self.request.user, run):
            raise PermissionDenied("You may view this run but not operate it.")
        return run

    @extend_schema(request=CancelSerializer, responses={200: RunSerializer})
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str) -> Response:
        """Cancel an unfinished run (409 with a reason if it already finished)."""
        body = CancelSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        run = run_cancel(run=self._operable(), actor=request.user, reason=body.validated_data["reason"])  # type: ignore[arg-type]
        return Response(RunSerializer(run).data)

    @extend_schema(request=RestartSerializer, responses={201: RunSerializer})
    @action(detail=True, methods=["post"])
    def restart(self, request: Request, pk: str) -> Response:
        """Start a new run from `step_key`, reusing the recorded outputs of the steps before it
        (409 while the run is still going)."""
        body = RestartSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        new = run_restart(
            run=self._operable(),
            step_key=body.validated_data["step_key"],
            actor=request.user,  # type: ignore[arg-type]
            overrides=body.validated_data["overrides"] or None,
            send_again=body.validated_data["send_again"],
        )
        return Response(RunSerializer(new).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={201: RunSerializer})
    @action(detail=True, methods=["post"])
    def replay(self, request: Request, pk: str) -> Response:
        """Re-execute the finished run from its recorded model calls; nothing reaches a model server or an
        outside system. Compare the outputs with `GET /api/runs/<new id>/diff/`."""
        new = run_replay(run=self._operable(), actor=request.user)  # type: ignore[arg-type]
        return Response(RunSerializer(new).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    @action(detail=True, methods=["get"])
    def diff(self, request: Request, pk: str) -> Response:
        """For a replay or what-if run: per step, the field-level differences from the original run."""
        run = self.get_object()
        original_id = run.replay_of_id or run.restarted_from_id
        if original_id is None:
            raise NotFound("This run is not a replay or a re-run of another run.")
        original = run_get_for_user(request.user, run_id=original_id)
        return Response({"original": original.pk, "run": run.pk, **run_diff(original, run)})

    @extend_schema(responses={200: InferenceCallSerializer(many=True)})
    @action(detail=True, methods=["get"])
    def calls(self, request: Request, pk: str) -> Response:
        """The model calls the run made (or replayed), in order, with provenance, tokens, cost and timings;
        paged like every list (`limit`, `offset`): an agent's run can make thousands."""
        run = self.get_object()
        page = self.paginate_queryset(inference_call_list_for_run(run))
        return self.get_paginated_response(InferenceCallSerializer(page, many=True).data)


@extend_schema(request=IncidentResolveSerializer, responses={200: IncidentSerializer})
@api_view(["POST"])
def incident_resolve_view(request: Request, incident_id: int) -> Response:
    """Resolve an incident: retry the step, skip it with a supplied output, or abort the run."""
    incident = incident_get_for_user(request.user, incident_id=incident_id)
    if not run_can_operate(request.user, incident.run):
        raise PermissionDenied("You may view this run but not operate it.")
    body = IncidentResolveSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    resolved = incident_resolve(
        incident=incident,
        actor=request.user,  # type: ignore[arg-type]
        action=body.validated_data["action"],
        output=body.validated_data.get("output"),
    )
    return Response(IncidentSerializer(resolved).data)


@extend_schema(
    request=RunStartSerializer,
    responses={201: RunSerializer, 200: RunSerializer},
    parameters=[
        OpenApiParameter(
            "Idempotency-Key",
            str,
            OpenApiParameter.HEADER,
            required=False,
            description="Repeat a request with the same key to get the same run instead of a second one.",
        )
    ],
)
@api_view(["POST"])
def run_start_view(request: Request, slug: str) -> Response:
    """Start a run of the workflow's published version. 400 with field errors when the input is invalid.
    A document field takes `{"document": <id>}` of a PDF the caller uploaded with `POST /api/documents/`."""
    workflow = workflow_get_for_user(request.user, slug=slug)
    run_start_rate_check(actor=request.user)  # type: ignore[arg-type]
    body = RunStartSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    key = request.headers.get("Idempotency-Key", "")
    if len(key) > 128:
        raise ValidationError({"Idempotency-Key": ["At most 128 characters."]})
    inputs = body.validated_data["inputs"]
    version = workflow_version_published_latest(workflow)
    if version is not None:
        # Document fields name an upload by id; the stored document's name, hash and text replace it.
        inputs = document_inputs_expand(actor=request.user, schema=version.input_schema, inputs=inputs)  # type: ignore[arg-type]
    run, created = run_start(
        actor=request.user,  # type: ignore[arg-type]
        workflow=workflow,
        inputs=inputs,
        idempotency_key=key,
        trigger="api",
    )
    return Response(RunSerializer(run).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class RunTestStartSerializer(serializers.Serializer):
    """What to test: the whole draft or one step, and with which input."""

    step = serializers.CharField(required=False, allow_blank=True, help_text="Test this step alone; empty: the draft.")
    inputs = serializers.JSONField(required=False, help_text="The run input; omit to use a sample or a recorded run.")
    sample = serializers.IntegerField(required=False, min_value=0, help_text="Index of a saved sample input.")
    recorded_run = serializers.IntegerField(
        required=False, help_text="A run of this workflow whose inputs (and, for a step test, outputs) to use."
    )
    allow_calls = serializers.ListField(
        child=serializers.CharField(), required=False, help_text="Side-effecting steps allowed to really call out."
    )


@extend_schema(
    request=RunTestStartSerializer,
    responses={201: RunSerializer, 400: OpenApiTypes.OBJECT, 403: OpenApiTypes.OBJECT, 404: OpenApiTypes.OBJECT},
)
@api_view(["POST"])
def run_test_start_api_view(request: Request, slug: str) -> Response:
    """Test the draft (or one step of it) on the real engine: a run marked as a test that never calls the
    outside world unless allowed. 400 with `problems` when the draft cannot run, 403 for viewers."""
    workflow = workflow_get_for_user(request.user, slug=slug)
    body = RunTestStartSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    data = body.validated_data
    recorded = None
    if data.get("recorded_run") is not None:
        recorded = run_list_for_user(request.user).filter(pk=data["recorded_run"], workflow=workflow).first()
        if recorded is None:
            raise ValidationError({"recorded_run": ["No such run of this workflow."]})
    inputs = data.get("inputs")
    if inputs is None and data.get("sample") is not None:
        inputs = draft_sample_inputs(workflow, data["sample"])
        if inputs is None:
            raise ValidationError({"sample": ["The draft has no saved sample with that number."]})
    if inputs is None and recorded is None:
        inputs = {}
    run = run_test_start(
        actor=request.user,  # type: ignore[arg-type]
        workflow=workflow,
        inputs=inputs,
        step_key=data.get("step") or None,
        allow_calls=data.get("allow_calls") or [],
        recorded_run=recorded,
    )
    return Response(RunSerializer(run).data, status=status.HTTP_201_CREATED)


@extend_schema(request={"multipart/form-data": DocumentUploadSerializer}, responses={201: DocumentSerializer})
@api_view(["POST"])
@parser_classes([MultiPartParser, FormParser])
def document_upload_view(request: Request) -> Response:
    """Upload a document (PDF, Word .docx, HTML, Markdown, plain text or CSV) to use as a run input; name it in
    a run's inputs as `{"document": <id>}`. Uploading the same file again returns the same document. 400 with a
    reason when the file is not one of those formats with text, is over 20 MB, or is a PDF of more than 200
    pages or protected by a password."""
    body = DocumentUploadSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    upload = body.validated_data["file"]
    if upload.size > MAX_BYTES:
        # Refused before reading, in the same shape as every other refusal of the upload.
        message = too_big_message(upload.size, upload.name)
        raise ValidationFailed(message, fields={"file": [message]})
    document = document_store(
        actor=request.user,  # type: ignore[arg-type]
        name=upload.name,
        data=upload.read(),
        content_type=upload.content_type,
    )
    return Response(DocumentSerializer(document).data, status=status.HTTP_201_CREATED)
