"""The triggers API: a workflow's triggers (list, create), one trigger (read, change, pause or resume, delete),
its history, and a webhook's new secret. Same services and rules as the pages: whoever may see the workflow
reads its triggers, whoever may change it manages them; a secret appears only in the answer that made it."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema, extend_schema_field, inline_serializer
from rest_framework import serializers, status
from rest_framework.decorators import api_view
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response

from apps.core.api import PAGE_PARAMETERS, page_schema, paged_response
from apps.runs.mailbox_poll import mailbox_state_for
from apps.runs.models import TriggerFiring
from apps.runs.triggers import (
    email_address_for,
    trigger_create,
    trigger_delete,
    trigger_firing_list,
    trigger_get_for_user,
    trigger_list_for_workflow,
    trigger_pause,
    trigger_resume,
    trigger_secret_rotate,
    trigger_update,
)
from apps.workflows.models import Trigger
from apps.workflows.selectors import workflow_can_edit, workflow_get_for_user
from apps.workflows.triggers import KINDS, schedule_describe


class TriggerSerializer(serializers.ModelSerializer):
    """A trigger as the API shows it: never its secret."""

    workflow: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    source_workflow = serializers.SerializerMethodField()
    url = serializers.SerializerMethodField()
    address = serializers.SerializerMethodField()
    mailbox = serializers.SerializerMethodField()
    description = serializers.SerializerMethodField()
    created_by = serializers.CharField(source="created_by.username", read_only=True)

    class Meta:
        model = Trigger
        fields = [
            "id",
            "workflow",
            "kind",
            "name",
            "enabled",
            "paused_at",
            "config",
            "inputs",
            "source_workflow",
            "url",
            "address",
            "mailbox",
            "description",
            "created_by",
            "created_at",
            "updated_at",
        ]

    def get_source_workflow(self, trigger: Trigger) -> str | None:
        return trigger.source_workflow.slug if trigger.source_workflow else None

    def get_url(self, trigger: Trigger) -> str | None:
        from django.urls import reverse

        request = self.context.get("request")
        names = {"webhook": ("hooks:receive", trigger.token), "form": ("runs:trigger-form", trigger.pk)}
        if trigger.kind not in names or request is None:
            return None
        name, arg = names[trigger.kind]
        return str(request.build_absolute_uri(reverse(name, args=[arg])))

    def get_address(self, trigger: Trigger) -> str | None:
        if trigger.kind != Trigger.Kind.EMAIL or trigger.config.get("connection"):
            return None  # --- an email trigger that reads a mailbox has no inbound address
        return email_address_for(trigger)

    @extend_schema_field(serializers.DictField(allow_null=True))
    def get_mailbox(self, trigger: Trigger) -> dict[str, Any] | None:
        """An email trigger that reads a mailbox: the connection's name and its last check (as the page shows)."""
        state = mailbox_state_for(trigger)
        if state is None:
            return None
        poll = state["poll"]
        return {
            "connection": state["name"],
            "checked_at": poll.polled_at if poll else None,
            "ok": poll.ok if poll else None,
            "message": poll.message if poll else "",
            "next_check_at": poll.due_at if poll and trigger.enabled else None,
        }

    def get_description(self, trigger: Trigger) -> str | None:
        return schedule_describe(trigger.config.get("cron", "")) if trigger.kind == Trigger.Kind.SCHEDULE else None


class TriggerCreateSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=KINDS)
    name = serializers.CharField(max_length=120)
    config = serializers.JSONField(required=False, default=dict)
    inputs = serializers.JSONField(required=False, default=dict, help_text="{run input field: CEL over payload}")
    source_workflow = serializers.CharField(
        required=False, allow_blank=True, default="", help_text="event: the slug of the workflow to follow"
    )


class TriggerUpdateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=120, required=False)
    config = serializers.JSONField(required=False)
    inputs = serializers.JSONField(required=False)
    enabled = serializers.BooleanField(required=False, help_text="false pauses the trigger, true resumes it")


class TriggerFiringSerializer(serializers.ModelSerializer):
    class Meta:
        model = TriggerFiring
        fields = ["id", "at", "outcome", "detail", "run", "key"]


@extend_schema(
    methods=["GET"],
    operation_id="workflows_triggers_list",
    parameters=PAGE_PARAMETERS,
    responses={200: page_schema(TriggerSerializer(many=True), "PaginatedTriggerList")},
)
@extend_schema(methods=["POST"], request=TriggerCreateSerializer, responses={201: TriggerSerializer})
@api_view(["GET", "POST"])
def workflow_trigger_list_view(request: Request, slug: str) -> Response:
    """GET: the workflow's triggers, by name, a page at a time. POST: add one (a webhook's answer holds its
    `secret`, this once)."""
    workflow = workflow_get_for_user(request.user, slug=slug)
    if request.method == "GET":
        return paged_response(
            request,
            trigger_list_for_workflow(workflow),
            lambda rows: TriggerSerializer(rows, many=True, context={"request": request}).data,
        )
    if not workflow_can_edit(request.user, workflow):
        raise PermissionDenied("Only those who may change this workflow manage its triggers.")
    body = TriggerCreateSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    values = dict(body.validated_data)
    values["source"] = values.pop("source_workflow")
    trigger, secret = trigger_create(actor=request.user, workflow=workflow, **values)  # type: ignore[arg-type]
    data: dict[str, Any] = dict(TriggerSerializer(trigger, context={"request": request}).data)
    if secret:
        data["secret"] = secret
    return Response(data, status=status.HTTP_201_CREATED)


@extend_schema(request=TriggerUpdateSerializer, responses={200: TriggerSerializer, 204: None})
@api_view(["GET", "PATCH", "DELETE"])
def trigger_detail_view(request: Request, trigger_id: int) -> Response:
    """GET: one trigger. PATCH: change its name, config or inputs, or pause (`enabled: false`) or resume it.
    DELETE: remove it and its history (the runs it started stay)."""
    trigger = trigger_get_for_user(request.user, trigger_id=trigger_id)
    if request.method == "GET":
        return Response(TriggerSerializer(trigger, context={"request": request}).data)
    if not workflow_can_edit(request.user, trigger.workflow):
        raise PermissionDenied("Only those who may change this workflow manage its triggers.")
    actor: Any = request.user
    if request.method == "DELETE":
        trigger_delete(actor=actor, trigger=trigger)
        return Response(status=status.HTTP_204_NO_CONTENT)
    body = TriggerUpdateSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    changes = {key: value for key, value in body.validated_data.items() if key != "enabled"}
    if changes:
        trigger = trigger_update(actor=actor, trigger=trigger, **changes)
    enabled = body.validated_data.get("enabled")
    if enabled is False and trigger.enabled:
        trigger = trigger_pause(actor=actor, trigger=trigger)
    elif enabled is True and not trigger.enabled:
        trigger, _ = trigger_resume(actor=actor, trigger=trigger)
    trigger = trigger_get_for_user(request.user, trigger_id=trigger.pk)
    return Response(TriggerSerializer(trigger, context={"request": request}).data)


@extend_schema(
    parameters=PAGE_PARAMETERS,
    responses={200: page_schema(TriggerFiringSerializer(many=True), "PaginatedTriggerFiringList")},
)
@api_view(["GET"])
def trigger_history_view(request: Request, trigger_id: int) -> Response:
    """A trigger's firings, newest first, a page at a time: time, outcome, detail and the run when one started."""
    trigger = trigger_get_for_user(request.user, trigger_id=trigger_id)
    return paged_response(
        request, trigger_firing_list(trigger), lambda rows: TriggerFiringSerializer(rows, many=True).data
    )


@extend_schema(
    request=None,
    responses={
        200: inline_serializer(
            "TriggerSecretRotated", {"id": serializers.IntegerField(), "secret": serializers.CharField()}
        )
    },
)
@api_view(["POST"])
def trigger_rotate_view(request: Request, trigger_id: int) -> Response:
    """A webhook's new signing secret, in this answer only; the old one stops working at once."""
    trigger = trigger_get_for_user(request.user, trigger_id=trigger_id)
    if not workflow_can_edit(request.user, trigger.workflow):
        raise PermissionDenied("Only those who may change this workflow manage its triggers.")
    actor: Any = request.user
    return Response({"id": trigger.pk, "secret": trigger_secret_rotate(actor=actor, trigger=trigger)})
