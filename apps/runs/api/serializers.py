from __future__ import annotations

from rest_framework import serializers

from apps.accounts.models import User
from apps.runs.models import Incident, Run, StepRun
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


class IncidentSerializer(serializers.ModelSerializer):
    step_key = serializers.CharField(source="step_run.step_key", read_only=True)
    resolved_by: serializers.SlugRelatedField[User] = serializers.SlugRelatedField(
        slug_field="username", read_only=True
    )

    class Meta:
        model = Incident
        fields = ["id", "step_key", "reason", "opened_at", "resolution", "resolved_by", "resolved_at"]


class RunDetailSerializer(RunSerializer):
    steps = StepRunSerializer(many=True, source="step_runs", read_only=True)
    incidents = IncidentSerializer(many=True, read_only=True)

    class Meta(RunSerializer.Meta):
        fields = [*RunSerializer.Meta.fields, "restarted_from", "restart_step_key", "steps", "incidents"]


class CancelSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=500)


class RestartSerializer(serializers.Serializer):
    step_key = serializers.CharField(max_length=64)


class IncidentResolveSerializer(serializers.Serializer):
    action = serializers.ChoiceField(choices=["retry", "skip", "abort"])
    output = serializers.DictField(required=False, default=dict, help_text="For skip: the step's output.")


class RunStartSerializer(serializers.Serializer):
    """The body of a start request; the fields themselves are checked against the workflow's schema."""

    inputs = serializers.DictField(help_text="Field values for the workflow's input schema.")
