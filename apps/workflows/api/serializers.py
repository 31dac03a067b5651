from __future__ import annotations

from dataclasses import asdict
from decimal import Decimal
from typing import Any

from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from apps.accounts.models import Team, User
from apps.steps.registry import step_types
from apps.workflows import blocks
from apps.workflows.blocks import NotBlockStructured
from apps.workflows.editor import OPERATIONS
from apps.workflows.models import Workflow, WorkflowVersion
from apps.workflows.selectors import (
    Problem,
    team_list_assignable,
    workflow_version_problems,
    workflow_version_published_latest,
)
from apps.workflows.services import workflow_publish_gate_problems

# A version's state is a plain string in the schema: another "state" enum (a run's) would collide with it.
VERSION_STATE_HELP = '"draft" or "published".'


class WorkflowVersionSerializer(serializers.ModelSerializer):
    state = serializers.CharField(read_only=True, help_text=VERSION_STATE_HELP)

    class Meta:
        model = WorkflowVersion
        fields = ["number", "state", "checksum", "published_at", "input_schema", "graph"]


class WorkflowSerializer(serializers.ModelSerializer):
    # allow_null: a workflow without a team (and a draft version nobody published) is null in the response.
    team: serializers.SlugRelatedField[Team] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True, allow_null=True
    )
    owner: serializers.SlugRelatedField[User] = serializers.SlugRelatedField(slug_field="username", read_only=True)
    published_version = serializers.SerializerMethodField()

    class Meta:
        model = Workflow
        fields = [
            "slug",
            "name",
            "description",
            "owner",
            "team",
            "baseline_minutes_per_case",
            "created_at",
            "updated_at",
            "archived_at",
            "published_version",
        ]

    @extend_schema_field(WorkflowVersionSerializer(allow_null=True))
    def get_published_version(self, workflow: Workflow) -> dict[str, Any] | None:
        version = workflow_version_published_latest(workflow)
        return WorkflowVersionSerializer(version).data if version else None


# --- requests ----------------------------------------------------------------------------------------------------


@extend_schema_field(OpenApiTypes.STR)
class AssignableTeamField(serializers.SlugRelatedField[Team]):
    """A team by slug, among those the caller may give a workflow to: their own teams (admins: every team), as
    on the workflow pages."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("error_messages", {"does_not_exist": "Choose one of your teams."})
        super().__init__(slug_field="slug", **kwargs)

    def get_queryset(self) -> QuerySet[Team]:
        return team_list_assignable(self.context["request"].user)


class WorkflowFilterSerializer(serializers.Serializer):
    """The list page's filters, as query parameters."""

    q = serializers.CharField(required=False, default="", help_text="Search in names and descriptions.")
    team = serializers.SlugField(required=False, default="", help_text="Only workflows of this team (its slug).")
    owner = serializers.ChoiceField(
        choices=["me"], required=False, allow_blank=True, default="", help_text="`me`: only the ones you own."
    )
    state = serializers.ChoiceField(
        choices=["active", "archived", "all"], required=False, default="active", help_text="Default: active."
    )


class WorkflowCreateSerializer(serializers.Serializer):
    name = serializers.CharField(allow_blank=True, trim_whitespace=True)
    description = serializers.CharField(required=False, allow_blank=True, default="")
    team = AssignableTeamField(required=False, allow_null=True, default=None)
    baseline_minutes_per_case = serializers.DecimalField(
        max_digits=8, decimal_places=2, min_value=Decimal("0"), required=False, default=Decimal("0")
    )


class WorkflowUpdateSerializer(serializers.Serializer):
    """Only the fields given change; `team: null` takes the workflow away from its team."""

    name = serializers.CharField(required=False, allow_blank=True)
    description = serializers.CharField(required=False, allow_blank=True)
    team = AssignableTeamField(required=False, allow_null=True)
    baseline_minutes_per_case = serializers.DecimalField(max_digits=8, decimal_places=2, required=False)


GRAPH_SHAPE = 'Must be an object with a "steps" list (and optionally "edges").'


def graph_shape_errors(graph: Any) -> list[str]:
    """What makes a graph unreadable by the validators: each step an object, each step's config an object."""
    if not isinstance(graph, dict) or not isinstance(graph.get("steps"), list):
        return [GRAPH_SHAPE]
    if not all(isinstance(step, dict) and isinstance(step.get("config", {}), dict) for step in graph["steps"]):
        return ['Each of "steps" must be an object, and its "config" (when given) an object.']
    return []


def _revision_field() -> serializers.IntegerField:
    return serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        help_text='The draft revision this change is based on; or send an If-Match: "<revision>" header.',
    )


class DraftSaveSerializer(serializers.Serializer):
    graph = serializers.JSONField(help_text='The engine graph: {"steps": [...], "edges": [...], settings}.')
    input_schema = serializers.JSONField(help_text="The JSON Schema of the run's input fields.")
    revision = _revision_field()

    def validate_graph(self, graph: Any) -> Any:
        if errors := graph_shape_errors(graph):
            raise serializers.ValidationError(errors)
        return graph


class DraftCheckSerializer(serializers.Serializer):
    """Content to check instead of the stored draft's; what is not given is taken from the draft."""

    graph = serializers.JSONField(required=False)
    input_schema = serializers.JSONField(required=False)

    def validate_graph(self, graph: Any) -> Any:
        if errors := graph_shape_errors(graph):
            raise serializers.ValidationError(errors)
        return graph


class DraftEditSerializer(serializers.Serializer):
    """One outline operation, with the fields it uses (the builder's buttons send the same)."""

    operation = serializers.ChoiceField(choices=list(OPERATIONS))
    revision = _revision_field()
    key = serializers.CharField(required=False, help_text="The step the operation applies to.")
    lane = serializers.CharField(
        required=False,
        help_text='insert, move_to: "root", "<key>/branch/<label>", "<key>/lane/<n>" or "<key>/error".',
    )
    index = serializers.IntegerField(required=False, allow_null=True, min_value=0, help_text="Position in the lane.")
    type = serializers.CharField(required=False, help_text="insert: the step type, e.g. llm.extract.")
    direction = serializers.ChoiceField(choices=["up", "down"], required=False, help_text="move.")
    # A plain string in the schema (another "mode" enum would collide with it); the service checks it.
    mode = serializers.CharField(required=False, help_text=f"error_mode: one of {', '.join(blocks.ERROR_MODES)}.")
    wait = serializers.ChoiceField(choices=["all", "any"], required=False, help_text="wait (a parallel step).")
    new_key = serializers.CharField(required=False, help_text="rekey.")
    step = serializers.DictField(
        required=False, help_text="configure: the step's settings (name, config, retry, timeout_seconds, key)."
    )


class DraftPublishSerializer(serializers.Serializer):
    note = serializers.CharField(required=False, allow_blank=True, default="", help_text="What this version changes.")
    revision = _revision_field()
    override_reason = serializers.CharField(
        required=False,
        allow_blank=True,
        default="",
        max_length=2000,
        help_text="Admins only: why this draft is published although its evaluation suite did not pass (audited).",
    )


class VersionDiffQuerySerializer(serializers.Serializer):
    # "from" is a Python keyword, so the fields are built here rather than declared.
    def get_fields(self) -> dict[str, serializers.Field]:
        return {
            "from": serializers.IntegerField(
                required=False,
                min_value=1,
                help_text="Default: the version before `to` (none: compared with an empty workflow).",
            ),
            "to": serializers.IntegerField(required=False, min_value=1, help_text="Default: the newest version."),
        }


# --- drafts and versions -------------------------------------------------------------------------------------


class ProblemSerializer(serializers.Serializer):
    step = serializers.CharField(allow_null=True, help_text="The step it belongs to; null for the workflow.")
    field = serializers.CharField(help_text='The setting\'s path, e.g. "prompt"; "@retry" for a step option.')
    message = serializers.CharField()


def problems_json(problems: list[Problem]) -> list[dict[str, Any]]:
    return [asdict(problem) for problem in problems]


class OutlineLaneSerializer(serializers.Serializer):
    id = serializers.CharField(help_text="The lane's address, for insert and move_to.")
    # Fields named like a Field attribute (label, source, fields) are fine: the serializer metaclass takes them out
    # of the class body; only the stubs see a clash.
    label = serializers.CharField(  # type: ignore[assignment]
        help_text='The branch label; "" for a parallel lane or an error lane.'
    )

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        fields["blocks"] = OutlineBlockSerializer(many=True)  # recursive: a lane holds blocks with lanes
        return fields


class OutlineBlockSerializer(serializers.Serializer):
    key = serializers.CharField()
    type = serializers.CharField()
    name = serializers.CharField()
    lane = serializers.CharField(help_text="The address of the lane it sits in.")
    index = serializers.IntegerField(help_text="Its position in that lane.")
    lanes = OutlineLaneSerializer(many=True, allow_null=True, help_text="Its branches or parallel lanes, if any.")
    new_lane = serializers.CharField(
        allow_null=True, help_text="A parallel step: the address that inserting into starts another lane."
    )
    wait = serializers.ChoiceField(choices=["all", "any"], allow_null=True, help_text="A parallel step: join mode.")
    error_mode = serializers.ChoiceField(choices=list(blocks.ERROR_MODES))
    on_error = OutlineLaneSerializer(allow_null=True, help_text="The steps taken when it fails, if any.")


def outline_json(tree: blocks.Tree) -> list[dict[str, Any]]:
    """The block tree as nested JSON (see OutlineBlockSerializer), in outline order, with each lane's address."""
    types = step_types()

    def block_json(block: blocks.Block, lane: str, index: int) -> dict[str, Any]:
        step_type = types.get(block.type)
        fans_out = bool(step_type and step_type.fans_out)
        lanes = None
        if block.lanes is not None:
            lanes = []
            for position, item in enumerate(block.lanes):
                address = blocks.lane_id(block, item, index=position)
                lanes.append({"id": address, "label": item.label, "blocks": sequence(item.blocks, address)})
        error_lane = blocks.lane_id(block, error=True)
        return {
            "key": block.key,
            "type": block.type,
            "name": str(block.step.get("name") or ""),
            "lane": lane,
            "index": index,
            "lanes": lanes,
            "new_lane": blocks.lane_id(block, blocks.Lane(""), index=len(block.lanes or [])) if fans_out else None,
            "wait": block.wait if fans_out else None,
            "error_mode": blocks.block_error_mode(block),
            "on_error": {"id": error_lane, "label": "", "blocks": sequence(block.on_error, error_lane)}
            if block.on_error is not None
            else None,
        }

    def sequence(items: list[blocks.Block], lane: str) -> list[dict[str, Any]]:
        return [block_json(block, lane, index) for index, block in enumerate(items)]

    return sequence(tree.blocks, blocks.ROOT)


class DraftSerializer(serializers.ModelSerializer):
    """The draft as the builder shows it: its content, its publish problems, and its outline."""

    updated_by: serializers.SlugRelatedField[User] = serializers.SlugRelatedField(slug_field="username", read_only=True)
    problems = serializers.SerializerMethodField()
    can_publish = serializers.SerializerMethodField()
    gate_problems = serializers.SerializerMethodField()
    outline = serializers.SerializerMethodField()
    read_only_reason = serializers.SerializerMethodField()
    undo_label = serializers.SerializerMethodField()

    class Meta:
        model = WorkflowVersion
        fields = [
            "number",
            "revision",
            "updated_at",
            "updated_by",
            "graph",
            "input_schema",
            "problems",
            "can_publish",
            "gate_problems",
            "outline",
            "read_only_reason",
            "undo_label",
        ]

    def to_representation(self, instance: WorkflowVersion) -> dict[str, Any]:
        # Problems and the tree are each worked out once per draft, then read by several fields.
        self._problems = workflow_version_problems(instance)
        self._gate_problems = workflow_publish_gate_problems(instance)
        try:
            self._tree: blocks.Tree | None = blocks.tree_from_graph(instance.graph)
            self._read_only_reason = ""
        except NotBlockStructured as error:
            self._tree, self._read_only_reason = None, str(error)
        return dict(super().to_representation(instance))

    @extend_schema_field(ProblemSerializer(many=True))
    def get_problems(self, draft: WorkflowVersion) -> list[dict[str, Any]]:
        return problems_json(self._problems)

    def get_can_publish(self, draft: WorkflowVersion) -> bool:
        return not self._problems and not self._gate_problems

    @extend_schema_field(
        serializers.ListField(
            child=serializers.CharField(),
            help_text="Why a publish gate would refuse the draft as it is (e.g. its evaluation suite has not passed "
            "on exactly this content); empty when none would.",
        )
    )
    def get_gate_problems(self, draft: WorkflowVersion) -> list[str]:
        return self._gate_problems

    @extend_schema_field(OutlineBlockSerializer(many=True, allow_null=True))
    def get_outline(self, draft: WorkflowVersion) -> list[dict[str, Any]] | None:
        return outline_json(self._tree) if self._tree is not None else None

    @extend_schema_field(serializers.CharField(help_text="Why `outline` is null (the graph is not block-shaped)."))
    def get_read_only_reason(self, draft: WorkflowVersion) -> str:
        return self._read_only_reason

    @extend_schema_field(serializers.CharField(allow_null=True, help_text="The change an undo would take back."))
    def get_undo_label(self, draft: WorkflowVersion) -> str | None:
        return str(draft.undo.get("label", "")) if isinstance(draft.undo, dict) else None


class DraftEditResultSerializer(DraftSerializer):
    """The draft after an edit, with a sentence saying what changed and the step to look at next."""

    message = serializers.SerializerMethodField()
    focus = serializers.SerializerMethodField()

    class Meta(DraftSerializer.Meta):
        fields = [*DraftSerializer.Meta.fields, "message", "focus"]

    def get_message(self, draft: WorkflowVersion) -> str:
        return str(self.context["message"])

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_focus(self, draft: WorkflowVersion) -> str | None:
        return self.context.get("focus")


class DraftCheckResultSerializer(serializers.Serializer):
    revision = serializers.IntegerField(help_text="The draft revision the content not given was taken from.")
    problems = ProblemSerializer(many=True)
    can_publish = serializers.BooleanField()


class VersionSerializer(serializers.ModelSerializer):
    published_by: serializers.SlugRelatedField[User] = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True
    )
    state = serializers.CharField(read_only=True, help_text=VERSION_STATE_HELP)
    run_count = serializers.SerializerMethodField()

    class Meta:
        model = WorkflowVersion
        fields = ["number", "state", "note", "checksum", "published_at", "published_by", "run_count"]

    def get_run_count(self, version: WorkflowVersion) -> int:
        # workflow_version_list annotates it; a single version counts its own.
        count = getattr(version, "run_count", None)
        return int(count) if count is not None else version.runs.count()


class VersionDetailSerializer(VersionSerializer):
    class Meta(VersionSerializer.Meta):
        fields = [*VersionSerializer.Meta.fields, "graph", "input_schema"]


class FieldChangeSerializer(serializers.Serializer):
    path = serializers.CharField()
    before = serializers.JSONField(allow_null=True, help_text="Null for an added value.")
    after = serializers.JSONField(allow_null=True, help_text="Null for a removed value.")
    kind = serializers.ChoiceField(choices=["added", "removed", "changed"])


class StepChangeSerializer(serializers.Serializer):
    key = serializers.CharField()
    kind = serializers.ChoiceField(choices=["added", "removed", "changed", "moved"])
    type = serializers.CharField()
    name = serializers.CharField()
    moved = serializers.BooleanField()
    fields = FieldChangeSerializer(many=True)  # type: ignore[assignment]
    before_position = serializers.CharField(allow_null=True)
    after_position = serializers.CharField(allow_null=True)


class EdgeChangeSerializer(serializers.Serializer):
    source = serializers.CharField()  # type: ignore[assignment]
    target = serializers.CharField()
    when = serializers.CharField()
    kind = serializers.ChoiceField(choices=["added", "removed"])


class VersionDiffSerializer(serializers.Serializer):
    to = serializers.IntegerField()
    summary = serializers.CharField()
    text = serializers.CharField(help_text="One change per line, as `manage.py workflow_import --dry-run` prints.")
    steps = StepChangeSerializer(many=True)
    edges = EdgeChangeSerializer(many=True)
    input_fields = FieldChangeSerializer(many=True)
    settings = FieldChangeSerializer(many=True)

    def get_fields(self) -> dict[str, serializers.Field]:
        # "from" is a Python keyword, so it cannot be declared above.
        return {"from": serializers.IntegerField(allow_null=True), **super().get_fields()}


# --- errors ------------------------------------------------------------------------------------------------------


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()


class FieldErrorsSerializer(ErrorSerializer):
    fields = serializers.DictField(  # type: ignore[assignment]
        child=serializers.ListField(child=serializers.CharField()),
        required=False,
        help_text="Each field's messages.",
    )


class DraftConflictSerializer(ErrorSerializer):
    """A 409: the draft changed since the caller's revision (then the draft's revision and who saved it last), or
    another conflict (no draft, nothing to undo, an evaluation gate) that only says why."""

    revision = serializers.IntegerField(required=False, help_text="The draft's current revision.")
    updated_by = serializers.CharField(required=False, allow_null=True, help_text="Who saved it last (username).")
    updated_at = serializers.DateTimeField(required=False)


class PublishRefusalSerializer(ErrorSerializer):
    """Either the draft's problems, or (a malformed request) `fields`: the request's own errors by field."""

    problems = ProblemSerializer(many=True, required=False)
    fields = serializers.DictField(  # type: ignore[assignment]
        child=serializers.ListField(child=serializers.CharField()),
        required=False,
        help_text="Each field's messages, when the request itself was invalid.",
    )
