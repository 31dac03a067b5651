"""Pinned test data over the API: the outputs test runs of the draft use instead of executing those steps.

The same services as the builder's step panel; editors only (viewers 403, others 404). Pins never reach a
published version, an export or a live run.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.decorators import api_view
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response

from apps.core.api import PAGE_PARAMETERS, page_schema, paged_response
from apps.core.exceptions import Forbidden
from apps.workflows.models import PinnedOutput
from apps.workflows.selectors import pinned_output_list, pinned_outputs_for, workflow_can_edit, workflow_get_for_user
from apps.workflows.services import pinned_output_clear, pinned_output_set


class PinnedOutputSerializer(serializers.ModelSerializer):
    pinned_by: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = PinnedOutput
        fields = ["step_key", "output", "pinned_by", "pinned_at"]


class PinBodySerializer(serializers.Serializer):
    output = serializers.JSONField(help_text="The output test runs use for this step (an object).")


def _editable(request: Request, slug: str) -> Any:
    workflow = workflow_get_for_user(request.user, slug=slug)
    if not workflow_can_edit(request.user, workflow):
        raise Forbidden("You may view this workflow but not change its test data.")
    return workflow


@extend_schema(
    operation_id="workflows_draft_pinned_list",
    parameters=PAGE_PARAMETERS,
    responses={
        200: page_schema(PinnedOutputSerializer(many=True), "PaginatedPinnedOutputList"),
        403: OpenApiTypes.OBJECT,
        404: OpenApiTypes.OBJECT,
    },
)
@api_view(["GET"])
def pinned_output_list_view(request: Request, slug: str) -> Response:
    """Every step's pinned test data, by step key, a page at a time."""
    workflow = _editable(request, slug)
    return paged_response(
        request, pinned_output_list(workflow), lambda rows: PinnedOutputSerializer(rows, many=True).data
    )


@extend_schema(
    methods=["PUT"],
    request=PinBodySerializer,
    responses={200: PinnedOutputSerializer, 400: OpenApiTypes.OBJECT, 403: OpenApiTypes.OBJECT},
)
@extend_schema(methods=["GET"], responses={200: PinnedOutputSerializer, 404: OpenApiTypes.OBJECT})
@extend_schema(methods=["DELETE"], responses={204: None, 403: OpenApiTypes.OBJECT})
@api_view(["GET", "PUT", "DELETE"])
def pinned_output_view(request: Request, slug: str, key: str) -> Response:
    """One step's pinned test data: read, pin (replacing) or unpin."""
    workflow = _editable(request, slug)
    if request.method == "PUT":
        body = PinBodySerializer(data=request.data)
        body.is_valid(raise_exception=True)
        actor: Any = request.user
        pinned = pinned_output_set(actor=actor, workflow=workflow, step_key=key, output=body.validated_data["output"])
        return Response(PinnedOutputSerializer(pinned).data)
    if request.method == "DELETE":
        unpinned_by: Any = request.user
        pinned_output_clear(actor=unpinned_by, workflow=workflow, step_key=key)
        return Response(status=status.HTTP_204_NO_CONTENT)
    found = pinned_outputs_for(workflow).get(key)
    if found is None:
        raise NotFound(f'No test data is pinned for step "{key}".')
    return Response(PinnedOutputSerializer(found).data)
