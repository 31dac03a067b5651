"""The approvals API: queues, items (with the inbox's views), claim / next / release / skip / reassign /
decide / bulk approve, absences, notifications and the corrections export. It mirrors the inbox pages and
calls the same services and selectors."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group
from django.db import transaction
from django.db.models import QuerySet
from django.http import StreamingHttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action, api_view
from rest_framework.request import Request
from rest_framework.response import Response

from apps.accounts.models import Team, User
from apps.accounts.roles import ADMIN, user_roles
from apps.approvals import corrections
from apps.approvals.membership import (
    queue_escalation_group_set,
    queue_member_add,
    queue_member_remove,
    queue_members,
)
from apps.approvals.models import ApprovalQueue, ApprovalRequest, Notification, OutOfOffice
from apps.approvals.rules import user_manages_queue
from apps.approvals.selectors import (
    InboxQuery,
    absences_for_user,
    approval_get_for_user,
    approval_list_for_user,
    band,
    inbox_counts,
    inbox_items,
    low_confidence_fields_for,
    notifications_for_user,
    queue_get_for_user,
    queue_list_for_user,
)
from apps.approvals.services import (
    QUEUE_FIELDS,
    absence_remove,
    absence_set,
    approval_bulk_approve,
    approval_claim,
    approval_decide,
    approval_next,
    approval_queue_create,
    approval_queue_update,
    approval_reassign,
    approval_release,
    approval_skip,
    notifications_mark_read,
)
from apps.core.api import PAGE_PARAMETERS, page_schema, paged_response, paging_check
from apps.core.exceptions import Forbidden, ValidationFailed


class QueueSerializer(serializers.ModelSerializer):
    # allow_null: a queue may have no team, lead or escalation group, and the schema must say they can be null.
    team: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True, allow_null=True
    )
    lead: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True
    )
    escalation_group: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="name", read_only=True, allow_null=True
    )

    class Meta:
        model = ApprovalQueue
        fields = ["key", "team", "lead", "escalation_group", *QUEUE_FIELDS]
        read_only_fields = fields


class ApprovalRequestSerializer(serializers.ModelSerializer):
    queue: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(slug_field="key", read_only=True)
    workflow = serializers.CharField(source="run.workflow.slug", read_only=True)
    decided_by: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(slug_field="username", read_only=True)
    assignee: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(slug_field="username", read_only=True)
    delegated_from: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", read_only=True
    )
    step_key = serializers.CharField(source="step_run.step_key", read_only=True)
    confidence_band = serializers.SerializerMethodField()
    must_confirm = serializers.SerializerMethodField()

    class Meta:
        model = ApprovalRequest
        fields = [
            "id",
            "run",
            "workflow",
            "step_key",
            "queue",
            "title",
            "priority",
            "payload",
            "proposal",
            "corrected",
            "schema",
            "confidence",
            "confidence_source",
            "confidence_band",
            "must_confirm",
            "evidence",
            "source_text",
            "policy",
            "required_approvals",
            "approvals_count",
            "stage",
            "state",
            "assignee",
            "claimed_at",
            "delegated_from",
            "audit_sample",
            "revision",
            "due_at",
            "expires_at",
            "decided_by",
            "decided_at",
            "reason_code",
            "reason",
            "edits",
            "created_at",
        ]
        read_only_fields = fields

    def get_confidence_band(self, obj: ApprovalRequest) -> str:
        return band(obj.min_confidence)

    def get_must_confirm(self, obj: ApprovalRequest) -> list[str]:
        return low_confidence_fields_for(obj)


class DecisionSerializer(serializers.Serializer):
    decision = serializers.ChoiceField(choices=["approved", "rejected"])
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=5000)
    reason_code = serializers.CharField(required=False, allow_blank=True, default="", max_length=64)
    edits = serializers.DictField(required=False, default=dict)
    confirmed = serializers.ListField(child=serializers.CharField(max_length=200), required=False, default=list)
    revision = serializers.IntegerField(required=False, allow_null=True, default=None)


class ReasonSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=5000)


class ReassignSerializer(serializers.Serializer):
    to = serializers.CharField(max_length=150, help_text="The username of the reviewer who takes the item.")
    reason = serializers.CharField(max_length=5000)


class BulkSerializer(serializers.Serializer):
    ids = serializers.ListField(child=serializers.IntegerField(), min_length=1, max_length=200)
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=5000)


# With `view`, the list is that inbox view (its sort and filters), paged by `limit` and `offset` as every list.
INBOX_PARAMETERS = [
    OpenApiParameter("view", str, enum=["mine", "unclaimed", "due_soon", "breached", "done"]),
    OpenApiParameter("queue", str),
    OpenApiParameter("workflow", str),
    OpenApiParameter("priority", int),
    OpenApiParameter("due", str, enum=["overdue", "today", "week", "none"]),
    OpenApiParameter("confidence", str, enum=["low", "medium", "high", "none"]),
    OpenApiParameter("sort", str, enum=["urgency", "due", "oldest", "newest", "confidence"]),
    OpenApiParameter("state", str, description="Without `view`: only items in this state."),
]


def _user(request: Request) -> User:
    return request.user  # type: ignore[return-value]


class ApprovalRequestViewSet(viewsets.ReadOnlyModelViewSet):
    """Approval items. With `view`, the list is that inbox view of the caller's queues (same filters, sort and
    pages as the inbox page); without it, every item the caller may see. Items she may not see are 404."""

    serializer_class = ApprovalRequestSerializer
    lookup_value_regex = r"\d+"

    def get_queryset(self) -> QuerySet[ApprovalRequest]:
        queryset = approval_list_for_user(self.request.user)
        state = self.request.query_params.get("state")
        return queryset.filter(state=state) if state else queryset

    def get_object(self) -> ApprovalRequest:
        return approval_get_for_user(self.request.user, request_id=int(self.kwargs["pk"]))

    @extend_schema(parameters=INBOX_PARAMETERS)
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        if "view" not in request.query_params:
            return super().list(request, *args, **kwargs)
        # An inbox view: its items in the view's sort, paged like every list, with the view and every view's count.
        query = InboxQuery.from_query(request.query_params)
        page = self.paginate_queryset(inbox_items(request.user, query))
        paged = self.get_paginated_response(ApprovalRequestSerializer(page, many=True).data)
        return Response({"view": query.view, "counts": inbox_counts(request.user), **paged.data})

    @extend_schema(responses={200: dict})
    @action(detail=False, methods=["get"])
    def counts(self, request: Request) -> Response:
        """How many items each inbox view holds for the caller."""
        return Response(inbox_counts(request.user))

    @extend_schema(request=None, responses={200: ApprovalRequestSerializer, 204: None})
    @action(detail=False, methods=["post"])
    def next(self, request: Request) -> Response:
        """Claim the most urgent item the caller may take; 204 when there is none."""
        claimed = approval_next(actor=_user(request))
        if claimed is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response(ApprovalRequestSerializer(approval_get_for_user(request.user, request_id=claimed.pk)).data)

    @extend_schema(request=None, responses={200: ApprovalRequestSerializer})
    @action(detail=True, methods=["post"])
    def claim(self, request: Request, pk: str) -> Response:
        """Take the item. 409 when someone else holds it or it is no longer pending."""
        approval_claim(request=self.get_object(), actor=_user(request))
        return Response(ApprovalRequestSerializer(self.get_object()).data)

    @extend_schema(request=ReasonSerializer, responses={200: ApprovalRequestSerializer})
    @action(detail=True, methods=["post"])
    def release(self, request: Request, pk: str) -> Response:
        """Put the item back in its queue (its holder, or the queue's lead)."""
        body = ReasonSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        approval_release(request=self.get_object(), actor=_user(request), reason=body.validated_data["reason"])
        return Response(ApprovalRequestSerializer(self.get_object()).data)

    @extend_schema(request=ReasonSerializer, responses={200: ApprovalRequestSerializer})
    @action(detail=True, methods=["post"])
    def skip(self, request: Request, pk: str) -> Response:
        """Set the item aside with a reason; "next" stops offering it to the caller."""
        body = ReasonSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        approval_skip(request=self.get_object(), actor=_user(request), reason=body.validated_data["reason"])
        return Response(ApprovalRequestSerializer(self.get_object()).data)

    @extend_schema(request=ReassignSerializer, responses={200: ApprovalRequestSerializer})
    @action(detail=True, methods=["post"])
    def reassign(self, request: Request, pk: str) -> Response:
        """Give the item to another reviewer of its queue, with a reason."""
        body = ReassignSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        to = User.objects.filter(username=body.validated_data["to"], is_active=True).first()
        if to is None:
            raise ValidationFailed("No such person.", fields={"to": ["No active user has that username."]})
        approval_reassign(request=self.get_object(), actor=_user(request), to=to, reason=body.validated_data["reason"])
        return Response(ApprovalRequestSerializer(self.get_object()).data)

    @extend_schema(request=DecisionSerializer, responses={200: ApprovalRequestSerializer})
    @action(detail=True, methods=["post"])
    def decide(self, request: Request, pk: str) -> Response:
        """Approve or reject, with corrections (`edits`), the low-confidence fields the caller confirmed,
        a reason code, and the `revision` she saw. 409 if already decided, held by someone else or changed
        since; 403 if she may not decide it; 400 with field errors for invalid edits or a missing reason."""
        body = DecisionSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        approval_decide(request=self.get_object(), actor=_user(request), **body.validated_data)
        return Response(ApprovalRequestSerializer(self.get_object()).data)

    @extend_schema(request=BulkSerializer, responses={200: ApprovalRequestSerializer(many=True)})
    # The decided items, answered whole: no paging, so the schema must not document a page.
    @action(detail=False, methods=["post"], url_path="bulk-approve", pagination_class=None)
    def bulk_approve(self, request: Request) -> Response:
        """Approve several items at once: all or nothing, each one qualifying for bulk approval."""
        body = BulkSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        items = [approval_get_for_user(request.user, request_id=pk) for pk in dict.fromkeys(body.validated_data["ids"])]
        decided = approval_bulk_approve(requests=items, actor=_user(request), reason=body.validated_data["reason"])
        return Response(ApprovalRequestSerializer(decided, many=True).data)


class QueueCreateSerializer(serializers.Serializer):
    """A new queue: its key and name, the team whose members work it and may name it (optional), its lead; any
    other setting of the queue (as in PATCH) may come along and is checked by the service."""

    key = serializers.CharField(max_length=150)
    name = serializers.CharField(max_length=150)
    team: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="slug", queryset=Team.objects.select_related("group"), required=False, allow_null=True
    )
    lead: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", queryset=User.objects.filter(is_active=True), required=False, allow_null=True
    )
    escalation_group: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="name", queryset=Group.objects.all(), required=False, allow_null=True
    )


class QueueMemberSerializer(serializers.Serializer):
    """One member of a queue: a person (`user`) or a group (`group`), the rights granted on the queue, and for a
    person whether she may work items at all (the reviewer or admin role) with a note when not."""

    kind = serializers.CharField()
    user = serializers.CharField(source="user.username", allow_null=True, default=None)
    group = serializers.CharField(source="group.name", allow_null=True, default=None)
    name = serializers.CharField()
    rights = serializers.ListField(child=serializers.CharField())
    can_work = serializers.BooleanField()
    note = serializers.CharField()
    people = serializers.IntegerField(help_text="For a group: its active members.")
    reviewers = serializers.IntegerField(help_text="For a group: its active members with the reviewer or admin role.")


MEMBER_PAGE = page_schema(QueueMemberSerializer(many=True), "PaginatedQueueMemberList")


class MemberChangeSerializer(serializers.Serializer):
    """Name one person (`user`, a username) or one group (`group`, its name), and the right."""

    user = serializers.CharField(max_length=150, required=False)
    group = serializers.CharField(max_length=150, required=False)
    right = serializers.ChoiceField(choices=["work", "use"], required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if bool(attrs.get("user")) == bool(attrs.get("group")):
            raise serializers.ValidationError("Name one person (user) or one group (group).")
        if attrs.get("user"):
            attrs["user"] = User.objects.filter(username=attrs["user"]).first()
            if attrs["user"] is None:
                raise serializers.ValidationError({"user": "No user has that username."})
        if attrs.get("group"):
            attrs["group"] = Group.objects.filter(name=attrs["group"]).first()
            if attrs["group"] is None:
                raise serializers.ValidationError({"group": "No group has that name."})
        return attrs


class ApprovalQueueViewSet(viewsets.ReadOnlyModelViewSet):
    """The queues the caller works, uses or leads; their lead or an admin changes one with PATCH. Admins create
    queues; those who manage a queue list, add and remove its members."""

    serializer_class = QueueSerializer
    lookup_field = "key"
    lookup_value_regex = r"[^/]+"

    def get_queryset(self) -> QuerySet[ApprovalQueue]:
        return queue_list_for_user(self.request.user)

    def get_object(self) -> ApprovalQueue:
        return queue_get_for_user(self.request.user, key=self.kwargs["key"])

    @extend_schema(request=QueueCreateSerializer, responses={201: QueueSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Create a queue (admins). With `team`, the team's members work it and may name it in approval steps."""
        user = _user(request)
        if not (user.is_superuser or ADMIN in user_roles(user)):
            raise Forbidden("Only admins create approval queues.")
        if not isinstance(request.data, dict):
            raise ValidationFailed("Send an object.", fields={"data": ["Must be a JSON object."]})
        body = QueueCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        named = body.validated_data
        settings = {name: value for name, value in request.data.items() if name not in QueueCreateSerializer().fields}
        team = named.get("team")
        holders = [team.group] if team else []
        queue = approval_queue_create(
            actor=user,
            key=named["key"],
            name=named["name"],
            team=team,
            lead=named.get("lead"),
            escalation_group=named.get("escalation_group"),
            workers=holders,
            users=holders,
            **settings,
        )
        return Response(QueueSerializer(queue).data, status=status.HTTP_201_CREATED)

    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        if not isinstance(request.data, dict):
            raise ValidationFailed("Send an object of settings.", fields={"data": ["Must be a JSON object."]})
        queue = self.get_object()
        changes = dict(request.data)
        if "lead" in changes:
            username = changes["lead"]
            changes["lead"] = User.objects.filter(username=username, is_active=True).first() if username else None
            if username and changes["lead"] is None:
                raise ValidationFailed("No such person.", fields={"lead": ["No active user has that username."]})
        group_given = "escalation_group" in changes
        group_name = changes.pop("escalation_group", None)
        group = Group.objects.filter(name=group_name).first() if group_name else None
        if group_name and group is None:
            raise ValidationFailed("No such group.", fields={"escalation_group": ["No group has that name."]})
        with transaction.atomic():
            # The group first: a lead who hands the lead to someone else may still set it in the same request.
            if group_given:
                queue = queue_escalation_group_set(actor=_user(request), queue=queue, group=group)
            queue = approval_queue_update(actor=_user(request), queue=queue, **changes)
        return Response(QueueSerializer(queue).data)

    @extend_schema(
        methods=["GET"],
        operation_id="approval_queues_members_list",
        request=None,
        parameters=PAGE_PARAMETERS,
        responses={200: MEMBER_PAGE},
        description="The members, a page at a time.",
    )
    @extend_schema(
        methods=["POST"],
        request=MemberChangeSerializer,
        parameters=PAGE_PARAMETERS,
        responses={200: MEMBER_PAGE, 201: MEMBER_PAGE},
        description="Grant `right` (default work); 201 when it is new. Answers the members after the change, paged "
        "as GET.",
    )
    @extend_schema(
        methods=["DELETE"],
        request=MemberChangeSerializer,
        parameters=PAGE_PARAMETERS,
        responses={200: MEMBER_PAGE},
        description="Take `right` (default: every right given here). Answers the members after the change, paged "
        "as GET.",
    )
    # Paged by hand (a function of the member list, not a queryset): the schema's pages are MEMBER_PAGE.
    @action(detail=True, methods=["get", "post", "delete"], pagination_class=None)
    def members(self, request: Request, key: str) -> Response:
        """Who works the queue and who may name it in approval steps: people and groups, groups first. Those who
        manage the queue list them, add one with a right (POST) and remove one (DELETE); removing the last
        person who could work a queue with waiting items is refused (400)."""
        queue = self.get_object()
        user = _user(request)
        if not user_manages_queue(user, queue):
            raise Forbidden(f'Only someone who manages the "{queue.name}" queue can see or change its members.')
        paging_check(request)
        if request.method == "GET":
            return _member_page(request, queue)
        body = MemberChangeSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        who = {"user": body.validated_data.get("user"), "group": body.validated_data.get("group")}
        if request.method == "POST":
            changed = queue_member_add(actor=user, queue=queue, right=body.validated_data.get("right", "work"), **who)
            code = status.HTTP_201_CREATED if changed else status.HTTP_200_OK
        else:
            queue_member_remove(actor=user, queue=queue, right=body.validated_data.get("right"), **who)
            code = status.HTTP_200_OK
        return _member_page(request, queue, code=code)


def _member_page(request: Request, queue: ApprovalQueue, *, code: int = 200) -> Response:
    return paged_response(
        request, queue_members(queue), lambda rows: QueueMemberSerializer(rows, many=True).data, status=code
    )


class AbsenceSerializer(serializers.ModelSerializer):
    delegate: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", queryset=User.objects.filter(is_active=True)
    )

    class Meta:
        model = OutOfOffice
        fields = ["id", "starts_on", "ends_on", "delegate", "note"]


class AbsenceViewSet(viewsets.GenericViewSet):
    """The caller's own absences (today and later): while away, items assigned to her go to her delegate."""

    serializer_class = AbsenceSerializer
    # Ids are numbers: anything else in the address is no absence (404), not a failed integer conversion (500).
    lookup_value_regex = r"[0-9]+"

    def get_queryset(self) -> QuerySet[OutOfOffice]:
        return OutOfOffice.objects.filter(user_id=_user(self.request).pk)

    def list(self, request: Request) -> Response:
        """The caller's absences that have not ended, soonest first, a page at a time."""
        page = self.paginate_queryset(absences_for_user(request.user))
        return self.get_paginated_response(AbsenceSerializer(page, many=True).data)

    def create(self, request: Request) -> Response:
        body = AbsenceSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        absence = absence_set(actor=_user(request), **body.validated_data)
        return Response(AbsenceSerializer(absence).data, status=status.HTTP_201_CREATED)

    def destroy(self, request: Request, pk: str) -> Response:
        absence = get_object_or_404(self.get_queryset(), pk=pk)
        absence_remove(actor=_user(request), absence=absence)
        return Response(status=status.HTTP_204_NO_CONTENT)


class NotificationSerializer(serializers.ModelSerializer):
    class Meta:
        model = Notification
        fields = ["id", "kind", "text", "request", "created_at", "read_at"]
        read_only_fields = fields


class MarkReadSerializer(serializers.Serializer):
    ids = serializers.ListField(child=serializers.IntegerField(), required=False, allow_null=True, default=None)


class NotificationViewSet(viewsets.GenericViewSet):
    """The caller's notifications, newest first; `read` marks some (or all) read."""

    serializer_class = NotificationSerializer

    def list(self, request: Request) -> Response:
        """The caller's notifications, newest first, a page at a time."""
        page = self.paginate_queryset(notifications_for_user(request.user))
        return self.get_paginated_response(NotificationSerializer(page, many=True).data)

    @extend_schema(request=MarkReadSerializer, responses={200: dict})
    @action(detail=False, methods=["post"])
    def read(self, request: Request) -> Response:
        body = MarkReadSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        return Response({"marked": notifications_mark_read(user=_user(request), ids=body.validated_data["ids"])})


@extend_schema(responses={(200, "application/x-ndjson"): str})
@api_view(["GET"])
def corrections_export_view(request: Request, slug: str) -> StreamingHttpResponse:
    """Every decision on the workflow's items as JSON Lines (input, model output, corrected output, per-field
    changes, reason, reviewer, time spent): the workflow's evaluation set. Whoever may view the workflow."""
    workflow = corrections.workflow_for_export(request.user, slug=slug)
    response = StreamingHttpResponse(corrections.corrections_jsonl(workflow), content_type="application/x-ndjson")
    response["Content-Disposition"] = f'attachment; filename="{workflow.slug}-corrections.jsonl"'
    return response
