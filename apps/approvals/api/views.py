from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from apps.approvals.models import ApprovalRequest
from apps.approvals.selectors import approval_get_for_user, approval_list_for_user
from apps.approvals.services import approval_decide


class ApprovalRequestSerializer(serializers.ModelSerializer):
    decided_by: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(slug_field="username", read_only=True)
    step_key = serializers.CharField(source="step_run.step_key", read_only=True)

    class Meta:
        model = ApprovalRequest
        fields = [
            "id",
            "run",
            "step_key",
            "queue",
            "title",
            "payload",
            "state",
            "due_at",
            "decided_by",
            "decided_at",
            "reason",
            "edits",
            "created_at",
        ]


class DecisionSerializer(serializers.Serializer):
    decision = serializers.ChoiceField(choices=["approved", "rejected"])
    reason = serializers.CharField(required=False, allow_blank=True, default="")
    edits = serializers.DictField(required=False, default=dict)


class ApprovalRequestViewSet(viewsets.ReadOnlyModelViewSet):
    """Approval requests on runs the caller may view; others are 404."""

    serializer_class = ApprovalRequestSerializer
    lookup_value_regex = r"\d+"

    def get_queryset(self) -> QuerySet[ApprovalRequest]:
        queryset = approval_list_for_user(self.request.user)
        state = self.request.query_params.get("state")
        return queryset.filter(state=state) if state else queryset

    def get_object(self) -> ApprovalRequest:
        return approval_get_for_user(self.request.user, request_id=int(self.kwargs["pk"]))

    @extend_schema(request=DecisionSerializer, responses={200: ApprovalRequestSerializer})
    @action(detail=True, methods=["post"])
    def decide(self, request: Request, pk: str) -> Response:
        """Approve or reject (with a reason). 409 if already decided, 403 if you may not decide it."""
        body = DecisionSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        decided = approval_decide(
            request=self.get_object(),
            actor=request.user,  # type: ignore[arg-type]
            decision=body.validated_data["decision"],
            reason=body.validated_data["reason"],
            edits=body.validated_data["edits"],
        )
        return Response(ApprovalRequestSerializer(decided).data)
