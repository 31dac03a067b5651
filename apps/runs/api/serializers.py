from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_serializer
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

    def to_representation(self, instance: StepRun) -> dict[str, Any]:
        data = super().to_representation(instance)
        if instance.state == StepRun.State.WAITING:
            # A result held for a person's review is not the step's output until approved, nor is what the model
            # streamed while writing it (the run page hides it too).
            data["output"] = None
            data["streamed_text"] = ""
        return data


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
            "total_cost",
            "mode",
            "replay_of",
            "restarted_from",
            "overrides",
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
    send_again = serializers.BooleanField(
        required=False,
        default=False,
        help_text="Confirm that steps which already reached outside systems in the original run act again.",
    )
    overrides = serializers.DictField(
        child=serializers.DictField(),
        required=False,
        default=dict,
        help_text='What-if: per step key, config values that replace the version\'s ({"extract": {"model": "large"}}).',
    )


class InferenceCallSerializer(serializers.Serializer):
    """One model call of the run: its provenance and metering (the recorded request and response are
    left out; they can hold a whole document)."""

    id = serializers.IntegerField()
    step_key = serializers.CharField()
    attempt = serializers.IntegerField()
    sequence = serializers.IntegerField()
    purpose = serializers.CharField()
    endpoint_name = serializers.CharField()
    protocol = serializers.CharField()
    model_id = serializers.CharField()
    revision = serializers.CharField()
    template_sha256 = serializers.CharField()
    input_sha256 = serializers.CharField()
    output_sha256 = serializers.CharField()
    parameters = serializers.JSONField()
    seed = serializers.IntegerField(allow_null=True)
    prompt_tokens = serializers.IntegerField()
    generated_tokens = serializers.IntegerField()
    ttft_ms = serializers.FloatField(allow_null=True)
    latency_ms = serializers.FloatField()
    queue_ms = serializers.FloatField()
    cost = serializers.DecimalField(max_digits=14, decimal_places=6)
    status = serializers.CharField()
    error = serializers.CharField()
    created_at = serializers.DateTimeField()


class IncidentResolveSerializer(serializers.Serializer):
    action = serializers.ChoiceField(choices=["retry", "skip", "abort"])
    output = serializers.DictField(required=False, default=dict, help_text="For skip: the step's output.")


class RunStartSerializer(serializers.Serializer):
    """The body of a start request; the fields themselves are checked against the workflow's schema."""

    inputs = serializers.DictField(help_text="Field values for the workflow's input schema.")


# Named apart from the knowledge API's document components (same class names, other fields).
@extend_schema_serializer(component_name="RunDocumentUpload")
class DocumentUploadSerializer(serializers.Serializer):
    """A document to use as a run input (multipart/form-data)."""

    file = serializers.FileField(
        help_text="A PDF, Word (.docx), HTML, Markdown, plain text or CSV file with text (not a scan), up to 20 MB; "
        "a PDF up to 200 pages."
    )


@extend_schema_serializer(component_name="RunDocument")
class DocumentSerializer(serializers.Serializer):
    """A stored document: name it in a run's input as `{"document": <id>}`."""

    id = serializers.IntegerField()
    name = serializers.CharField()
    sha256 = serializers.CharField()
    pages = serializers.IntegerField(source="page_count")
    size = serializers.IntegerField()
    content_type = serializers.CharField(help_text="The format read: application/pdf, text/markdown, ...")
