"""The workflow API: workflows, their draft (the builder's operations over REST) and their versions.

Every endpoint calls the services and selectors the builder's pages call (apps/workflows/views.py). A workflow
the caller may not see is 404; one they may see but not change is 403. Writes to the draft name the revision
they were based on (`revision` in the body or an If-Match header), so a stale client gets a 409 naming who
changed the draft instead of overwriting their work; a write that names none gets a 428.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

from django.db.models import QuerySet
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action, api_view
from rest_framework.exceptions import APIException, NotFound, PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response

from apps.accounts.models import User
from apps.core.api import PAGE_PARAMETERS, page_schema, paged_response
from apps.core.exceptions import ApplicationError, Conflict, ValidationFailed
from apps.workflows.api.serializers import (
    DraftCheckResultSerializer,
    DraftCheckSerializer,
    DraftConflictSerializer,
    DraftEditResultSerializer,
    DraftEditSerializer,
    DraftPublishSerializer,
    DraftSaveSerializer,
    DraftSerializer,
    ErrorSerializer,
    FieldErrorsSerializer,
    PublishRefusalSerializer,
    VersionDetailSerializer,
    VersionDiffQuerySerializer,
    VersionDiffSerializer,
    VersionSerializer,
    WorkflowCreateSerializer,
    WorkflowFilterSerializer,
    WorkflowSerializer,
    WorkflowUpdateSerializer,
    problems_json,
)
from apps.workflows.diff import diff_text, version_diff
from apps.workflows.editor import draft_edit
from apps.workflows.models import Workflow, WorkflowVersion
from apps.workflows.selectors import (
    problems_parse,
    workflow_can_edit,
    workflow_draft_for,
    workflow_get_for_user,
    workflow_list_filtered,
    workflow_list_for_user,
    workflow_version_get,
    workflow_version_list,
    workflow_version_problems,
)
from apps.workflows.services import (
    UNCHANGED,
    DraftConflict,
    workflow_archive,
    workflow_create,
    workflow_draft_get_or_create,
    workflow_draft_save,
    workflow_publish_gate_problems,
    workflow_update,
    workflow_version_publish,
    workflow_version_restore_as_draft,
)

# --- errors, as the schema documents them --------------------------------------------------------------------

NOT_FOUND = OpenApiResponse(ErrorSerializer, description="No such workflow (or version), or not visible to you.")
FORBIDDEN = OpenApiResponse(
    ErrorSerializer, description="Not signed in, or you may see the workflow but not change it."
)
INVALID = OpenApiResponse(FieldErrorsSerializer, description="The request was refused; `fields` says why, by field.")
REFUSED = OpenApiResponse(
    FieldErrorsSerializer, description="The operation was refused (e.g. a move into its own branch) or invalid."
)
STALE = OpenApiResponse(
    DraftConflictSerializer,
    description="The draft changed since `revision`: who saved it, when, and its revision now. Nothing was saved.",
)
NO_REVISION = OpenApiResponse(
    ErrorSerializer, description="No `revision` in the body and no If-Match header: say which revision you edited."
)
IF_MATCH = OpenApiParameter(
    "If-Match",
    str,
    OpenApiParameter.HEADER,
    required=False,
    description='The draft revision this change is based on, e.g. "7" (the ETag of GET draft), when the body has '
    'no `revision`. "*" overwrites whatever the draft holds.',
)


class PreconditionRequired(APIException):
    status_code = 428
    default_detail = (
        'Say which draft revision this change is based on: "revision" in the body, or an If-Match: "<revision>" '
        "header (GET the draft for it). If-Match: * overwrites whatever the draft holds."
    )
    default_code = "precondition_required"


# --- helpers -------------------------------------------------------------------------------------------------


def _actor(request: Request) -> User:
    # Every endpoint here requires authentication (DEFAULT_PERMISSION_CLASSES), so the user is a User.
    return cast(User, request.user)


def _editable(request: Request, slug: str) -> Workflow:
    workflow = workflow_get_for_user(request.user, slug=slug)
    if not workflow_can_edit(request.user, workflow):
        raise PermissionDenied("You may view this workflow but not change it.")
    return workflow


def _valid(serializer_class: type[serializers.Serializer], data: Any, request: Request | None = None) -> Any:
    """The validated body, or a 400 in the same shape as the services' refusals ({detail, fields})."""
    body = serializer_class(data=data, context={"request": request})
    if not body.is_valid():
        raise ValidationFailed("Check the fields listed.", fields=dict(body.errors))
    return body.validated_data


_ETAG = re.compile(r'(?:W/)?"?(\d+)"?')


def _expected_revision(request: Request, revision: int | None) -> int | None:
    """The revision a draft write is based on: the body's, else If-Match's; None (overwrite) for If-Match: *."""
    if revision is not None:
        return revision
    header = request.headers.get("If-Match", "").strip()
    if header == "*":
        return None
    if not header:
        raise PreconditionRequired()
    match = _ETAG.fullmatch(header)
    if match is None:
        raise ValidationFailed(
            "If-Match is not a draft revision.", fields={"If-Match": ['A revision in quotes, e.g. "7", or *.']}
        )
    return int(match[1])


@contextmanager
def _refusals_for_api(workflow: Workflow) -> Iterator[None]:
    """Every stale-draft refusal names who changed the draft and when (as a stale save does), and publish
    problems are structured like the draft's."""
    try:
        yield
    except DraftConflict as conflict:
        draft = workflow_draft_for(workflow)
        if draft is not None:
            conflict.extra = {
                "revision": draft.revision,
                "updated_by": draft.updated_by.get_username() if draft.updated_by else None,
                "updated_at": draft.updated_at.isoformat(),
                **conflict.extra,
            }
        raise
    except ApplicationError as refusal:
        problems = refusal.extra.get("problems")
        if isinstance(problems, list) and all(isinstance(problem, str) for problem in problems):
            refusal.extra = {**refusal.extra, "problems": problems_json(problems_parse(problems))}
        raise


def _draft_response(draft: WorkflowVersion, **edit: Any) -> Response:
    """The draft (with `message` and `focus` after an edit), its revision as the ETag for If-Match."""
    data = DraftEditResultSerializer(draft, context=edit).data if edit else DraftSerializer(draft).data
    return Response(data, headers={"ETag": f'"{draft.revision}"'})


def _filtered(filters: dict[str, str], user: User) -> QuerySet[Workflow]:
    """The list page's filters, shared through the selector."""
    return workflow_list_filtered(
        user, q=filters["q"], team=filters["team"], owner=filters["owner"], state=filters["state"]
    )


# --- workflows -----------------------------------------------------------------------------------------------


@extend_schema_view(
    list=extend_schema(
        parameters=[WorkflowFilterSerializer], responses={200: WorkflowSerializer(many=True), 400: INVALID}
    ),
    retrieve=extend_schema(responses={200: WorkflowSerializer, 404: NOT_FOUND}),
)
class WorkflowViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Workflows the caller may view (others are 404); the owner changes, archives and restores them."""

    serializer_class = WorkflowSerializer
    lookup_field = "slug"

    def get_queryset(self) -> QuerySet[Workflow]:
        workflows = workflow_list_for_user(self.request.user)
        if self.action != "list":
            return workflows
        return _filtered(_valid(WorkflowFilterSerializer, self.request.query_params), _actor(self.request))

    def get_object(self) -> Workflow:
        return workflow_get_for_user(self.request.user, slug=self.kwargs["slug"])

    @extend_schema(
        request=WorkflowCreateSerializer,
        responses={
            201: WorkflowSerializer,
            400: INVALID,
            403: OpenApiResponse(ErrorSerializer, description="Only analysts create workflows."),
        },
    )
    def create(self, request: Request) -> Response:
        """Create a workflow (without versions: its draft starts on the first GET of `draft/`)."""
        if not request.user.has_perm("workflows.add_workflow"):
            raise PermissionDenied("Only analysts create workflows.")
        body = _valid(WorkflowCreateSerializer, request.data, request)
        workflow = workflow_create(
            actor=_actor(request),
            name=body["name"],
            description=body["description"],
            team=body["team"],
            baseline_minutes_per_case=body["baseline_minutes_per_case"],
        )
        return Response(WorkflowSerializer(workflow).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        request=WorkflowUpdateSerializer,
        responses={200: WorkflowSerializer, 400: INVALID, 403: FORBIDDEN, 404: NOT_FOUND},
    )
    def partial_update(self, request: Request, slug: str) -> Response:
        """Rename, describe, move to another team (or none) or change the ROI baseline; the slug never changes."""
        workflow = _editable(request, slug)
        body = _valid(WorkflowUpdateSerializer, request.data, request)
        workflow = workflow_update(
            actor=_actor(request),
            workflow=workflow,
            name=body.get("name"),
            description=body.get("description"),
            team=body.get("team", UNCHANGED),
            baseline_minutes_per_case=body.get("baseline_minutes_per_case"),
        )
        return Response(WorkflowSerializer(workflow).data)

    @extend_schema(request=None, responses={200: WorkflowSerializer, 403: FORBIDDEN, 404: NOT_FOUND})
    @action(detail=True, methods=["post"])
    def archive(self, request: Request, slug: str) -> Response:
        """Archive: hidden from the default list, starts no runs; versions and runs are kept."""
        workflow = workflow_archive(actor=_actor(request), workflow=_editable(request, slug), archived=True)
        return Response(WorkflowSerializer(workflow).data)

    @extend_schema(request=None, responses={200: WorkflowSerializer, 403: FORBIDDEN, 404: NOT_FOUND})
    @action(detail=True, methods=["post"])
    def restore(self, request: Request, slug: str) -> Response:
        """Bring an archived workflow back, unchanged."""
        workflow = workflow_archive(actor=_actor(request), workflow=_editable(request, slug), archived=False)
        return Response(WorkflowSerializer(workflow).data)


# --- the draft -----------------------------------------------------------------------------------------------


@extend_schema(
    methods=["GET"],
    operation_id="workflow_draft_retrieve",
    responses={200: DraftSerializer, 403: FORBIDDEN, 404: NOT_FOUND},
)
@extend_schema(
    methods=["PUT"],
    operation_id="workflow_draft_update",
    request=DraftSaveSerializer,
    parameters=[IF_MATCH],
    responses={200: DraftSerializer, 400: INVALID, 403: FORBIDDEN, 404: NOT_FOUND, 409: STALE, 428: NO_REVISION},
)
@api_view(["GET", "PUT"])
def workflow_draft_view(request: Request, slug: str) -> Response:
    """GET: the draft as the builder shows it (started from the newest version on first read), with its
    problems and its outline (null, with `read_only_reason`, when the graph cannot be shown as blocks).
    PUT: replace its graph and input schema. A draft may be invalid: it is saved, and its problems listed."""
    workflow = _editable(request, slug)
    if request.method == "GET":
        return _draft_response(workflow_draft_get_or_create(actor=_actor(request), workflow=workflow))
    body = _valid(DraftSaveSerializer, request.data)
    with _refusals_for_api(workflow):
        draft = workflow_draft_save(
            actor=_actor(request),
            workflow=workflow,
            graph=body["graph"],
            input_schema=body["input_schema"],
            expected_revision=_expected_revision(request, body.get("revision")),
            label="Save through the API",
        )
    return _draft_response(draft)


@extend_schema(
    operation_id="workflow_draft_edit",
    request=DraftEditSerializer,
    parameters=[IF_MATCH],
    responses={
        200: DraftEditResultSerializer,
        400: REFUSED,
        403: FORBIDDEN,
        404: NOT_FOUND,
        409: OpenApiResponse(
            DraftConflictSerializer, description="The draft changed since `revision`, or there is nothing to undo."
        ),
        428: NO_REVISION,
    },
)
@api_view(["POST"])
def workflow_draft_edit_view(request: Request, slug: str) -> Response:
    """One outline operation, as the builder's buttons do it: insert, delete, move, move_to, duplicate,
    configure, error_mode, wait, rekey or undo. Lanes are addressed as in the draft's `outline`."""
    workflow = _editable(request, slug)
    body = dict(_valid(DraftEditSerializer, request.data))
    operation, revision = body.pop("operation"), body.pop("revision", None)
    with _refusals_for_api(workflow):
        result = draft_edit(
            actor=_actor(request),
            workflow=workflow,
            operation=operation,
            data=body,
            expected_revision=_expected_revision(request, revision),
        )
    return _draft_response(result.draft, message=result.message, focus=result.focus)


@extend_schema(
    operation_id="workflow_draft_validate",
    request=DraftCheckSerializer,
    responses={200: DraftCheckResultSerializer, 400: INVALID, 403: FORBIDDEN, 404: NOT_FOUND},
)
@api_view(["POST"])
def workflow_draft_validate_view(request: Request, slug: str) -> Response:
    """The problems that would stop a publish, saving nothing: of the draft as stored, or of a `graph` and/or
    `input_schema` given in the body (the draft's own for what is not given)."""
    workflow = _editable(request, slug)
    body = _valid(DraftCheckSerializer, request.data)
    draft = workflow_draft_get_or_create(actor=_actor(request), workflow=workflow)
    candidate = WorkflowVersion(
        workflow=workflow,
        number=draft.number,
        graph=body.get("graph", draft.graph),
        input_schema=body.get("input_schema", draft.input_schema),
    )
    problems = workflow_version_problems(candidate)
    can_publish = not problems and not workflow_publish_gate_problems(candidate)
    return Response({"revision": draft.revision, "problems": problems_json(problems), "can_publish": can_publish})


@extend_schema(
    operation_id="workflow_draft_publish",
    request=DraftPublishSerializer,
    parameters=[IF_MATCH],
    responses={
        201: VersionDetailSerializer,
        400: OpenApiResponse(PublishRefusalSerializer, description="The draft has problems; every one is listed."),
        403: FORBIDDEN,
        404: NOT_FOUND,
        409: OpenApiResponse(
            DraftConflictSerializer,
            description="The draft changed since `revision`, there is no draft, or its evaluation suite has not "
            "passed on this content (`problems` say why, `evaluation` summarises the newest report).",
        ),
        428: NO_REVISION,
    },
)
@api_view(["POST"])
def workflow_draft_publish_view(request: Request, slug: str) -> Response:
    """Publish the draft as the next version, with a change note: new runs use it, running ones keep theirs."""
    workflow = _editable(request, slug)
    body = _valid(DraftPublishSerializer, request.data)
    expected_revision = _expected_revision(request, body.get("revision"))
    draft = workflow_draft_for(workflow)
    if draft is None:
        raise Conflict("There is no draft to publish.")
    with _refusals_for_api(workflow):
        version = workflow_version_publish(
            actor=_actor(request),
            version=draft,
            note=body["note"],
            expected_revision=expected_revision,
            override_reason=body["override_reason"],
        )
    return Response(VersionDetailSerializer(version).data, status=status.HTTP_201_CREATED)


# --- versions ------------------------------------------------------------------------------------------------


@extend_schema(
    operation_id="workflow_version_list",
    parameters=PAGE_PARAMETERS,
    responses={200: page_schema(VersionSerializer(many=True), "PaginatedVersionList"), 404: NOT_FOUND},
)
@api_view(["GET"])
def workflow_version_list_view(request: Request, slug: str) -> Response:
    """Every version, newest first (the draft too), a page at a time: who published it, when, its note and its
    run count."""
    workflow = workflow_get_for_user(request.user, slug=slug)
    versions = workflow_version_list(workflow)
    return paged_response(request, versions, lambda rows: VersionSerializer(rows, many=True).data)


@extend_schema(
    operation_id="workflow_version_retrieve",
    responses={200: VersionDetailSerializer, 404: NOT_FOUND},
)
@api_view(["GET"])
def workflow_version_detail_view(request: Request, slug: str, number: int) -> Response:
    """One version with its graph and input schema."""
    workflow = workflow_get_for_user(request.user, slug=slug)
    return Response(VersionDetailSerializer(workflow_version_get(workflow, number=number)).data)


@extend_schema(
    operation_id="workflow_version_restore",
    request=None,
    responses={
        200: DraftSerializer,
        403: FORBIDDEN,
        404: NOT_FOUND,
        409: OpenApiResponse(ErrorSerializer, description="Only a published version can be restored."),
    },
)
@api_view(["POST"])
def workflow_version_restore_view(request: Request, slug: str, number: int) -> Response:
    """Make a published version's content the draft; the draft before is one undo away."""
    workflow = _editable(request, slug)
    version = workflow_version_get(workflow, number=number)
    return _draft_response(workflow_version_restore_as_draft(actor=_actor(request), version=version))


@extend_schema(
    operation_id="workflow_version_diff",
    parameters=[VersionDiffQuerySerializer],
    responses={200: VersionDiffSerializer, 400: INVALID, 404: NOT_FOUND},
)
@api_view(["GET"])
def workflow_version_diff_view(request: Request, slug: str) -> Response:
    """What changed from version `from` to version `to`: steps added, removed, changed or moved (each changed
    field before and after), edges, input fields and graph settings."""
    workflow = workflow_get_for_user(request.user, slug=slug)
    query = _valid(VersionDiffQuerySerializer, request.query_params)
    versions = workflow_version_list(workflow)
    after = workflow_version_get(workflow, number=query["to"]) if "to" in query else versions.first()
    if after is None:
        raise NotFound("This workflow has no versions yet.")
    if "from" in query:
        before: WorkflowVersion | None = workflow_version_get(workflow, number=query["from"])
    else:
        before = versions.filter(number__lt=after.number).first()
    diff = version_diff(
        before.graph if before else {"steps": []},
        before.input_schema if before else {},
        after.graph,
        after.input_schema,
    )
    payload = {
        "from": before.number if before else None,
        "to": after.number,
        "summary": diff.summary(),
        "text": diff_text(diff),
        "steps": diff.steps,
        "edges": diff.edges,
        "input_fields": diff.input_fields,
        "settings": diff.settings,
    }
    return Response(VersionDiffSerializer(payload).data)
