from __future__ import annotations

from rest_framework import serializers

from apps.accounts.models import User
from apps.runs.models import Run, StepRun
from apps.workflows.models import Workflow


class StepRunSerializer(serializers.ModelSerializer):
    class Meta:
        model = StepRun
        fields = [
            "step_key",
            "step_type",
            "name",
            "position",
            "state",
            "attempt",
            "output",
            "usage",
            "error",
            "streamed_text",
            "queued_at",
            "started_at",
            "finished_at",
        ]


class RunSerializer(serializers.ModelSerializer):
    workflow: serializers.SlugRelatedField[Workflow] = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    version = serializers.IntegerField(source="version.number", read_only=True)
    initiator: serializers.SlugRelatedField[User] = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = Run
        fields = [
            "id",
            "workflow",
            "version",
            "status",
            "inputs",
            "output",
            "error",
            "trigger",
            "initiator",
            "total_prompt_tokens",
            "total_generated_tokens",
            "created_at",
            "started_at",
            "finished_at",
        ]


class RunDetailSerializer(RunSerializer):
    steps = StepRunSerializer(many=True, source="step_runs", read_only=True)

    class Meta(RunSerializer.Meta):
        fields = [*RunSerializer.Meta.fields, "steps"]


class RunStartSerializer(serializers.Serializer):
    """The body of a start request; the fields themselves are checked against the workflow's schema."""

    inputs = serializers.DictField(help_text="Field values for the workflow's input schema.")
