from __future__ import annotations

from django.db.models import QuerySet
from rest_framework import viewsets

from apps.workflows.api.serializers import WorkflowSerializer
from apps.workflows.models import Workflow
from apps.workflows.selectors import workflow_get_for_user, workflow_list_for_user


class WorkflowViewSet(viewsets.ReadOnlyModelViewSet):
    """Workflows the caller may view; others are 404."""

    serializer_class = WorkflowSerializer
    lookup_field = "slug"

    def get_queryset(self) -> QuerySet[Workflow]:
        return workflow_list_for_user(self.request.user)

    def get_object(self) -> Workflow:
        return workflow_get_for_user(self.request.user, slug=self.kwargs["slug"])
