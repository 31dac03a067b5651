from __future__ import annotations

from typing import Any

from rest_framework import serializers

from apps.accounts.models import Team, User
from apps.workflows.models import Workflow, WorkflowVersion
from apps.workflows.selectors import workflow_version_published_latest


class WorkflowVersionSerializer(serializers.ModelSerializer):
    class Meta:
        model = WorkflowVersion
        fields = ["number", "state", "checksum", "published_at", "input_schema", "graph"]


class WorkflowSerializer(serializers.ModelSerializer):
    team: serializers.SlugRelatedField[Team] = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    owner: serializers.SlugRelatedField[User] = serializers.SlugRelatedField(slug_field="username", read_only=True)
    published_version = serializers.SerializerMethodField()

    class Meta:
        model = Workflow
        fields = ["slug", "name", "description", "owner", "team", "created_at", "updated_at", "published_version"]

    def get_published_version(self, workflow: Workflow) -> dict[str, Any] | None:
        version = workflow_version_published_latest(workflow)
        return WorkflowVersionSerializer(version).data if version else None
