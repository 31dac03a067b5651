from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import api_view
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from apps.runs.api.serializers import RunDetailSerializer, RunSerializer, RunStartSerializer
from apps.runs.models import Run
from apps.runs.selectors import run_get_for_user, run_list_for_user
from apps.runs.services import run_start
from apps.workflows.selectors import workflow_get_for_user


class RunViewSet(viewsets.ReadOnlyModelViewSet):
    """Runs the caller may view; others are 404."""

    lookup_value_regex = r"\d+"

    def get_queryset(self) -> QuerySet[Run]:
        return run_list_for_user(self.request.user)

    def get_serializer_class(self) -> type[RunSerializer]:
        return RunDetailSerializer if self.action == "retrieve" else RunSerializer

    def get_object(self) -> Run:
        return run_get_for_user(self.request.user, run_id=int(self.kwargs["pk"]))


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
    """Start a run of the workflow's published version. 400 with field errors when the input is invalid."""
    workflow = workflow_get_for_user(request.user, slug=slug)
    body = RunStartSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    key = request.headers.get("Idempotency-Key", "")
    if len(key) > 128:
        raise ValidationError({"Idempotency-Key": ["At most 128 characters."]})
    run, created = run_start(
        actor=request.user,  # type: ignore[arg-type]
        workflow=workflow,
        inputs=body.validated_data["inputs"],
        idempotency_key=key,
        trigger="api",
    )
    return Response(RunSerializer(run).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)
