"""The builder's edits: one request names one operation on the draft's block tree.

`draft_edit` is the one write behind the editor's buttons, its htmx requests and the draft API's edit
endpoint: it reads the draft, applies the operation to its tree, compiles and proves the result (the new
graph must read back as blocks), and saves it through `workflow_draft_save` with the revision the editor
loaded, so a stale editor gets a conflict instead of overwriting someone's work.

Problems a step's settings have (a wrong type, an expression that does not parse, a reference to a step that
may not have run) never block a save: the draft keeps them and the problems list shows them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from django.db import transaction

from apps.accounts.models import User
from apps.core.exceptions import ApplicationError, ValidationFailed
from apps.steps.registry import step_types
from apps.workflows import blocks
from apps.workflows.blocks import BlockEditError, NotBlockStructured, Tree
from apps.workflows.models import PinnedOutput, Workflow, WorkflowVersion
from apps.workflows.services import workflow_draft_get_or_create, workflow_draft_save, workflow_draft_undo

OPERATIONS = ("insert", "delete", "move", "move_to", "duplicate", "configure", "error_mode", "wait", "rekey", "undo")


@dataclass(frozen=True)
class EditResult:
    """The saved draft, a sentence for the page's live region, and the step to focus afterwards."""

    draft: WorkflowVersion
    message: str
    focus: str | None = None


def _title(block: blocks.Block) -> str:
    return str(block.step.get("name") or block.key)


def _new_step(tree: Tree, step_type: str) -> dict[str, Any]:
    types = step_types()
    if step_type not in types:
        raise ValidationFailed(
            "Choose a step type from the palette.", fields={"type": [f'Unknown step type "{step_type}".']}
        )
    return {
        "key": blocks.key_new(blocks.keys_of(tree), step_type),
        "type": step_type,
        "name": types[step_type].name,
        "config": {},
    }


def _int(value: Any, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValidationFailed(f"{name} must be a whole number.", fields={name: ["Must be a whole number."]}) from None


def _apply(tree: Tree, operation: str, data: dict[str, Any]) -> tuple[str, str | None]:
    """Apply one operation to `tree` in place; returns (message, step to focus)."""
    key = str(data.get("key") or "")
    if operation == "insert":
        step = _new_step(tree, str(data.get("type") or ""))
        block = blocks.block_insert(
            tree, lane=str(data.get("lane") or blocks.ROOT), index=_int(data.get("index", 0), "index"), step=step
        )
        return f'Added "{_title(block)}".', block.key
    if operation == "delete":
        block = blocks.block_delete(tree, key=key)
        inner = sum(1 for _ in blocks.walk([block])) - 1
        extra = f" and the {inner} step{'s' if inner != 1 else ''} in its branches" if inner else ""
        return f'Deleted "{_title(block)}"{extra}.', None
    if operation == "move":
        direction = str(data.get("direction"))
        if direction not in ("up", "down"):
            raise ValidationFailed("Move up or down.", fields={"direction": ['Must be "up" or "down".']})
        blocks.block_move(tree, key=key, direction=direction)
        return f'Moved "{_title(blocks.find(tree, key)[0])}" {direction}.', key
    if operation == "move_to":
        lane = str(data.get("lane") or "")
        index = data.get("index")
        blocks.block_move_to(tree, key=key, lane=lane, index=None if index in (None, "") else _int(index, "index"))
        names = {address: name for address, _, _, name in blocks.lanes_of(tree)}
        return f'Moved "{_title(blocks.find(tree, key)[0])}" to {names.get(lane, "the chosen place")}.', key
    if operation == "duplicate":
        copied = blocks.block_duplicate(tree, key=key)
        return f'Duplicated as "{_title(copied)}".', copied.key
    if operation == "configure":
        posted = data.get("step")
        if not isinstance(posted, dict):
            raise ValidationFailed("Nothing to save.", fields={"step": ["Must be the step's settings."]})
        step = posted
        block, _ = blocks.find(tree, key)
        # None clears an option (no retry policy, no timeout), so the step falls back to the defaults.
        merged = {name: value for name, value in {**block.step, **step}.items() if value is not None}
        blocks.block_step_replace(tree, key=key, step=merged)
        new_key = step.get("key")
        if isinstance(new_key, str) and new_key and new_key != key:
            blocks.block_rekey(tree, key=key, new_key=new_key)
            key = new_key
        return f'Saved "{_title(blocks.find(tree, key)[0])}".', key
    if operation == "error_mode":
        blocks.block_error_mode_set(tree, key=key, mode=str(data.get("mode")))
        return f'Changed what a failure of "{_title(blocks.find(tree, key)[0])}" does.', key
    if operation == "wait":
        blocks.block_wait_set(tree, key=key, wait=str(data.get("wait")))
        return "Changed how the branches join.", key
    if operation == "rekey":
        blocks.block_rekey(tree, key=key, new_key=str(data.get("new_key") or ""))
        return f"Renamed the step key to {data.get('new_key')}; references follow it.", str(data.get("new_key"))
    raise ValidationFailed("Unknown operation.", fields={"operation": [f"Choose one of: {', '.join(OPERATIONS)}."]})


def draft_tree(draft: WorkflowVersion) -> Tree:
    """The draft's blocks; `ApplicationError` when its graph cannot be shown as blocks (made through the API)."""
    try:
        return blocks.tree_from_graph(draft.graph)
    except NotBlockStructured as error:
        raise ApplicationError(
            f"This draft's graph cannot be edited as an outline ({error}). Edit it through the API or import a "
            "file, or restore a version made in the builder."
        ) from None


@transaction.atomic
def draft_edit(
    *, actor: User, workflow: Workflow, operation: str, data: dict[str, Any], expected_revision: int | None
) -> EditResult:
    """Apply one builder operation to the workflow's draft and save it (see the module docstring)."""
    if operation == "undo":
        draft = workflow_draft_undo(actor=actor, workflow=workflow, expected_revision=expected_revision)
        return EditResult(draft=draft, message=f"Undone. {draft.undo.get('label', '') if draft.undo else ''}".strip())
    draft = workflow_draft_get_or_create(actor=actor, workflow=workflow)
    tree = draft_tree(draft)
    before = blocks.keys_of(tree)
    try:
        message, focus = _apply(tree, operation, copy.deepcopy(data))
        graph = blocks.graph_from_tree(tree)
        blocks.tree_from_graph(graph)
    except BlockEditError as error:
        raise ApplicationError(str(error)) from None
    except NotBlockStructured:
        raise ApplicationError(
            "That change would make branches the outline cannot show unambiguously; the draft is unchanged. "
            "Try placing the step elsewhere."
        ) from None
    saved = workflow_draft_save(
        actor=actor,
        workflow=workflow,
        graph=graph,
        input_schema=draft.input_schema,
        expected_revision=expected_revision,
        label=message,
    )
    _pins_follow(workflow, before=before, tree=tree, renamed=renamed_from(operation, data, focus))
    return EditResult(draft=saved, message=message, focus=focus)


def renamed_from(operation: str, data: dict[str, Any], focus: str | None) -> dict[str, str]:
    """{old key: new key} when the edit renamed a step."""
    old = str(data.get("key") or "")
    if operation in ("rekey", "configure") and focus and old and focus != old:
        return {old: focus}
    return {}


def _pins_follow(workflow: Workflow, *, before: set[str], tree: Tree, renamed: dict[str, str]) -> None:
    """Test data pinned for a step follows its renames and goes with it when it is deleted, so a later step
    that happens to get the same key never inherits it."""
    for old, new in renamed.items():
        PinnedOutput.objects.filter(workflow=workflow, step_key=new).delete()
        PinnedOutput.objects.filter(workflow=workflow, step_key=old).update(step_key=new)
    gone = before - blocks.keys_of(tree) - set(renamed)
    if gone:
        PinnedOutput.objects.filter(workflow=workflow, step_key__in=gone).delete()
