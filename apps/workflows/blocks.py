"""The builder's editing model: a tree of blocks that compiles to the engine's `steps` + `edges` graph.

A *sequence* is a list of blocks run one after the other. A *block* is one step, with:
- `lanes` for a step that branches: a lane per branch label of an `If`, a `Switch`, an approval or a
  classification (edges labelled with the branch), or one per parallel lane of a `flow.parallel` (plain
  success edges, all started at once). Every lane, when it ends, continues with the block after the
  branching one (its *merge*); at the end of a sequence, a lane simply ends the run's path.
- `on_error`: a sequence taken when the step fails (an "error" edge). With `error_continues` it then
  continues with the step's merge like a lane (a fallback); without, the failed path stops there (the
  steps after the failed one are skipped, the run still succeeds). An empty error lane that continues
  means "ignore a failure of this step".

The graph stays the single source of truth: drafts, versions and the API store graphs, and the editor
decompiles a graph into blocks on every request. `tree_from_graph` recognises a block-structured graph and
proves it by compiling the tree back and comparing; a graph it cannot show as blocks (one made through the
API with arbitrary edges) raises `NotBlockStructured` and the editor shows it read-only.

Compilation rules (the decompiler reads them back):
- steps are written in pre-order: a block, then its lanes in order, its error lane, then what follows;
- a block's merge is the block after it in its sequence (`following`), or nothing at the end;
- the step after a parallel block carries an explicit `join` ("all", or "any" to continue after the first
  lane), which marks it as that parallel's merge even when only one lane leads to it;
- a graph that is one plain sequence is written without `edges` (the engine runs it in list order).

Lanes are addressed by strings: "root", "<key>/branch/<label>", "<key>/lane/<n>", "<key>/error".
"""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from apps.steps.registry import step_type_find

SUCCESS, ERROR = "success", "error"
ROOT = "root"
STRUCTURAL_KEYS = ("join",)


class NotBlockStructured(Exception):
    """The graph's edges do not form sequences, branches and lanes; the message says where."""


class BlockEditError(Exception):
    """An edit that cannot be applied to the tree (an unknown step, a move into itself); the message is for
    the analyst."""


@dataclass
class Lane:
    """One branch of a block: `label` is its branch label, or "" for a parallel lane."""

    label: str
    blocks: list[Block] = field(default_factory=list)


@dataclass
class Block:
    """One step and what hangs under it (see the module docstring)."""

    step: dict[str, Any]
    lanes: list[Lane] | None = None
    on_error: list[Block] | None = None
    error_continues: bool = True
    # For a parallel block: how the step after it joins the lanes ("all" or "any").
    wait: str = "all"

    @property
    def key(self) -> str:
        return str(self.step["key"])

    @property
    def type(self) -> str:
        return str(self.step.get("type", ""))


@dataclass
class Tree:
    """A workflow's graph as blocks, plus the graph's other settings (budget, output, timeout)."""

    blocks: list[Block]
    settings: dict[str, Any] = field(default_factory=dict)


# --- step type facts ---------------------------------------------------------------------------------------


def branching(step: Mapping[str, Any]) -> tuple[tuple[str, ...], bool, bool]:
    """(branch labels, branches always, fans out) for a step definition; unknown types branch nowhere."""
    step_type = step_type_find(str(step.get("type")))
    if step_type is None:
        return (), False, False
    return step_type.branch_labels(step.get("config") or {}), step_type.branches_always, step_type.fans_out


def new_lanes(step: Mapping[str, Any]) -> list[Lane] | None:
    """The empty lanes a newly inserted step gets: its branches when it always branches, none otherwise
    (a parallel block starts with no lanes; the analyst adds them by inserting steps)."""
    labels, always, fans_out = branching(step)
    if fans_out:
        return []
    if always:
        return [Lane(label) for label in labels]
    return None


# --- compiling ---------------------------------------------------------------------------------------------


def _plain_step(step: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in step.items() if name not in STRUCTURAL_KEYS}


class _Compiler:
    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []
        self.edges: list[dict[str, str]] = []
        self.index: dict[str, dict[str, Any]] = {}
        self.joins: dict[str, str] = {}

    def sequence(self, blocks: list[Block], following: str | None) -> str | None:
        """Emit a sequence whose end continues with `following`; returns its entry (or `following`)."""
        for position, block in enumerate(blocks):
            after = blocks[position + 1].key if position + 1 < len(blocks) else following
            self.block(block, after)
        return blocks[0].key if blocks else following

    def edge(self, source: str, target: str | None, when: str) -> None:
        if target is not None:
            self.edges.append(
                {"from": source, "to": target} if when == SUCCESS else {"from": source, "to": target, "when": when}
            )

    def block(self, block: Block, following: str | None) -> None:
        step = _plain_step(block.step)
        self.steps.append(step)
        self.index[block.key] = step
        _, _, fans_out = branching(block.step)
        lanes: list[tuple[list[Block], str | None, str]] = []
        if block.lanes is None or (fans_out and not block.lanes):
            self.edge(block.key, following, SUCCESS)
        else:
            lanes += [(lane.blocks, following, SUCCESS if fans_out else lane.label) for lane in block.lanes]
        if fans_out and following is not None:
            self.joins[following] = block.wait
        if block.on_error is not None:
            lanes.append((block.on_error, following if block.error_continues else None, ERROR))
        # The edges into the lanes first, then the lanes: edges read top-down, as the outline does.
        for blocks, after, when in lanes:
            self.edge(block.key, blocks[0].key if blocks else after, when)
        for blocks, after, _ in lanes:
            self.sequence(blocks, after)


def _has_structure(blocks: list[Block]) -> bool:
    return any(block.lanes is not None or block.on_error is not None for block in blocks)


def graph_from_tree(tree: Tree) -> dict[str, Any]:
    """The engine graph of a tree (see the module docstring for the rules)."""
    compiler = _Compiler()
    compiler.sequence(tree.blocks, None)
    for key, join in compiler.joins.items():
        compiler.index[key]["join"] = join
    graph: dict[str, Any] = {"steps": compiler.steps}
    if _has_structure(tree.blocks) or compiler.joins:
        graph["edges"] = compiler.edges
    graph.update(copy.deepcopy(tree.settings))
    return graph


# --- decompiling -------------------------------------------------------------------------------------------

_EXIT = "\x00exit"


def _resolved_edges(graph: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    steps = graph.get("steps") or []
    if "edges" not in graph:
        keys = [step["key"] for step in steps]
        return [(a, b, SUCCESS) for a, b in itertools.pairwise(keys)]
    return [(e["from"], e["to"], e.get("when", SUCCESS)) for e in graph.get("edges") or []]


def _post_dominators(keys: list[str], outgoing: dict[str, list[str]]) -> dict[str, str]:
    """Immediate post-dominator of each step (`_EXIT` for the end), by the Cooper-Harvey-Kennedy iteration
    on the reversed graph. Steps that cannot reach the end (a cycle) are left out."""
    predecessors_in_reverse: dict[str, list[str]] = {key: list(outgoing[key]) or [_EXIT] for key in keys}
    reverse: dict[str, list[str]] = {_EXIT: [], **{key: [] for key in keys}}
    for key in keys:
        for target in predecessors_in_reverse[key]:
            reverse[target].append(key)
    order: list[str] = []
    seen = {_EXIT}
    stack: list[tuple[str, Iterator[str]]] = [(_EXIT, iter(reverse[_EXIT]))]
    while stack:
        node, children = stack[-1]
        for child in children:
            if child not in seen:
                seen.add(child)
                stack.append((child, iter(reverse[child])))
                break
        else:
            stack.pop()
            order.append(node)
    order.reverse()
    number = {node: position for position, node in enumerate(order)}
    idom: dict[str, str] = {_EXIT: _EXIT}

    def intersect(a: str, b: str) -> str:
        while a != b:
            while number[a] > number[b]:
                a = idom[a]
            while number[b] > number[a]:
                b = idom[b]
        return a

    changed = True
    while changed:
        changed = False
        for node in order[1:]:
            candidates = [p for p in predecessors_in_reverse[node] if p in idom]
            if not candidates:
                continue
            new = candidates[0]
            for other in candidates[1:]:
                new = intersect(other, new)
            if idom.get(node) != new:
                idom[node] = new
                changed = True
    return {key: value for key, value in idom.items() if key != _EXIT}


class _Decompiler:
    def __init__(self, graph: Mapping[str, Any]) -> None:
        steps = graph.get("steps")
        if not isinstance(steps, list) or not all(isinstance(s, dict) and isinstance(s.get("key"), str) for s in steps):
            raise NotBlockStructured("the graph's steps are not a list of steps with keys")
        self.steps = {step["key"]: step for step in steps}
        if len(self.steps) != len(steps):
            raise NotBlockStructured("two steps share a key")
        self.keys = [step["key"] for step in steps]
        self.position = {key: index for index, key in enumerate(self.keys)}
        try:
            edges = _resolved_edges(graph)
        except (KeyError, TypeError) as error:
            raise NotBlockStructured("an edge is missing its from or to") from error
        self.out: dict[str, list[tuple[str, str]]] = {key: [] for key in self.keys}
        self.incoming: dict[str, int] = dict.fromkeys(self.keys, 0)
        for source, target, when in edges:
            if source not in self.steps or target not in self.steps:
                raise NotBlockStructured(f"an edge connects {source!r} to {target!r}, which are not both steps")
            self.out[source].append((target, when))
            self.incoming[target] += 1
        # Merges are found on the forward graph without error edges: an error lane that stops its path
        # must not hide the merge of the branches around it.
        self.forward = {k: [t for t, when in v if when != ERROR] for k, v in self.out.items()}
        for key, outgoing in self.out.items():
            # A branch without an edge ends its path: to the post-dominator search it leads to the end.
            labels, always, _ = branching(self.steps[key])
            taken = {when for _, when in outgoing}
            if (always or taken - {SUCCESS, ERROR}) and set(labels) - taken:
                self.forward[key].append(_EXIT)
        self.ipdom = _post_dominators(self.keys, self.forward)
        if len(self.ipdom) != len(self.keys):
            raise NotBlockStructured("the steps form a cycle")
        self.placed: set[str] = set()
        self._reach: dict[str, set[str]] = {}

    def reachable(self, key: str) -> set[str]:
        """`key` and every step after it."""
        if key not in self._reach:
            seen = {key}
            frontier = [key]
            while frontier:
                for target in self.forward[frontier.pop()]:
                    if target not in seen and target != _EXIT:
                        seen.add(target)
                        frontier.append(target)
            self._reach[key] = seen
        return self._reach[key]

    def region(self, start: str, end: str) -> list[str]:
        """`start` and the steps after it up to (not including) `end`, along forward edges."""
        seen = {start}
        frontier = [start]
        while frontier:
            for target in self.forward[frontier.pop()]:
                if target not in seen and target not in (end, _EXIT):
                    seen.add(target)
                    frontier.append(target)
        return sorted(seen, key=self.position.__getitem__)

    def merge(self, key: str, stop: str | None) -> str | None:
        step = self.steps[key]
        _, _, fans_out = branching(step)
        candidate: str | None = self.ipdom[key]
        if not fans_out:
            return None if candidate == _EXIT else candidate
        entries = [target for target, when in self.out[key] if when == SUCCESS]
        # A join mark after a nested parallel on the way belongs to that parallel, unless no later mark
        # claims this one: then the graph reads the same either way and the step is taken to follow both.
        claimed: list[str] = []
        chain: list[str] = []
        while candidate not in (None, _EXIT):
            assert candidate is not None
            chain.append(candidate)
            if sum(candidate in self.reachable(e) for e in entries) >= 2:
                return candidate
            if "join" in self.steps[candidate] and candidate not in claimed:
                return candidate
            if candidate == stop:
                break
            following = self.ipdom[candidate]
            for node in self.region(candidate, following):
                if node != key and branching(self.steps[node])[2]:
                    inner = self.merge(node, stop if node == candidate else following)
                    if inner is not None:
                        claimed.append(inner)
            candidate = following
        on_chain = [node for node in claimed if node in chain]
        if on_chain:
            return on_chain[0]
        return None if candidate in (None, _EXIT) else candidate

    def sequence(self, start: str | None, stop: str | None) -> list[Block]:
        blocks: list[Block] = []
        node = start
        while node is not None and node != stop:
            if node in self.placed:
                raise NotBlockStructured(f'step "{node}" is reached along two paths that do not merge as branches')
            self.placed.add(node)
            merge = self.merge(node, stop)
            blocks.append(self.block(node, merge))
            node = merge
        return blocks

    def block(self, key: str, merge: str | None) -> Block:
        step = self.steps[key]
        labels, always, fans_out = branching(step)
        block = Block(step=_plain_step(step))
        outgoing = self.out[key]
        errors = [target for target, when in outgoing if when == ERROR]
        successes = [target for target, when in outgoing if when == SUCCESS]
        labelled = {when: target for target, when in outgoing if when not in (SUCCESS, ERROR)}
        if len(errors) > 1:
            raise NotBlockStructured(f'step "{key}" has two error paths')
        if len(labelled) != len([1 for _, when in outgoing if when not in (SUCCESS, ERROR)]):
            raise NotBlockStructured(f'step "{key}" has two paths for one branch')
        if errors:
            block.on_error = self.sequence(errors[0], merge)
            block.error_continues = merge is not None and merge in self.reachable(errors[0])
        if fans_out:
            if labelled:
                raise NotBlockStructured(f'parallel step "{key}" has labelled paths')
            block.lanes = [Lane("", self.sequence(target, merge)) for target in successes if target != merge]
            if merge is not None:
                block.wait = str(self.steps[merge].get("join", "all"))
        elif labelled or (always and not successes):
            unknown = sorted(set(labelled) - set(labels))
            if unknown:
                raise NotBlockStructured(f'step "{key}" has a path for branch "{unknown[0]}", which it never takes')
            if successes:
                raise NotBlockStructured(f'step "{key}" has both branch paths and a plain next step')
            block.lanes = [
                Lane(label, self.sequence(labelled[label], merge) if label in labelled else []) for label in labels
            ]
        elif len(successes) > 1 or (successes and successes[0] != merge):
            raise NotBlockStructured(f'step "{key}" starts several steps at once without being a parallel step')
        return block


def _normal_graph(graph: Mapping[str, Any]) -> tuple[Any, ...]:
    steps = {}
    for step in graph.get("steps") or []:
        normal = dict(step)
        if normal.get("join") == "all":
            normal.pop("join")
        steps[step["key"]] = normal
    edges = sorted(set(_resolved_edges(graph)))
    settings = {name: value for name, value in graph.items() if name not in ("steps", "edges")}
    return steps, edges, settings


def tree_from_graph(graph: Mapping[str, Any]) -> Tree:
    """The blocks of a block-structured graph; `NotBlockStructured` says why a graph is not one."""
    if not isinstance(graph, Mapping):
        raise NotBlockStructured("the graph is not an object")
    decompiler = _Decompiler(graph)
    settings = {name: copy.deepcopy(value) for name, value in graph.items() if name not in ("steps", "edges")}
    entries = [key for key in decompiler.keys if decompiler.incoming[key] == 0]
    if len(entries) > 1:
        raise NotBlockStructured(f"the graph starts at several steps ({', '.join(entries[:3])})")
    blocks = decompiler.sequence(entries[0] if entries else None, None)
    missing = [key for key in decompiler.keys if key not in decompiler.placed]
    if missing:
        raise NotBlockStructured(f'step "{missing[0]}" is not reached from the first step')
    tree = Tree(blocks=blocks, settings=settings)
    if _normal_graph(graph_from_tree(tree)) != _normal_graph(graph):
        raise NotBlockStructured("some connections between steps cannot be shown as branches and lanes")
    return tree


# --- walking and addressing --------------------------------------------------------------------------------


def lane_id(parent: Block | None, lane: Lane | None = None, *, error: bool = False, index: int = 0) -> str:
    """The address of a lane (see the module docstring)."""
    if parent is None:
        return ROOT
    if error:
        return f"{parent.key}/error"
    assert lane is not None
    if lane.label:
        return f"{parent.key}/branch/{lane.label}"
    return f"{parent.key}/lane/{index}"


@dataclass(frozen=True)
class Place:
    """Where a block sits: its lane's address and list, and its index in that list."""

    lane: str
    siblings: list[Block]
    index: int
    parent: Block | None


def walk(blocks: list[Block], lane: str = ROOT, parent: Block | None = None) -> Iterator[tuple[Block, Place]]:
    """Every block in pre-order (the compiled step order) with where it sits."""
    for index, block in enumerate(blocks):
        yield block, Place(lane, blocks, index, parent)
        for position, child_lane in enumerate(block.lanes or []):
            yield from walk(child_lane.blocks, lane_id(block, child_lane, index=position), block)
        if block.on_error is not None:
            yield from walk(block.on_error, lane_id(block, error=True), block)


def lanes_of(tree: Tree) -> list[tuple[str, list[Block], Block | None, str]]:
    """Every lane of the tree as (address, its blocks, its owner, a readable name), in outline order."""
    found: list[tuple[str, list[Block], Block | None, str]] = [(ROOT, tree.blocks, None, "Main flow")]
    for block, _ in walk(tree.blocks):
        title = block.step.get("name") or block.key
        for position, lane in enumerate(block.lanes or []):
            name = f'"{lane.label}" branch of {title}' if lane.label else f"lane {position + 1} of {title}"
            found.append((lane_id(block, lane, index=position), lane.blocks, block, name))
        if block.on_error is not None:
            found.append((lane_id(block, error=True), block.on_error, block, f"on error of {title}"))
    return found


def find(tree: Tree, key: str) -> tuple[Block, Place]:
    for block, place in walk(tree.blocks):
        if block.key == key:
            return block, place
    raise BlockEditError(f'There is no step "{key}" in this draft.')


def _lane_list(tree: Tree, address: str, *, create: bool) -> list[Block]:
    """The list behind a lane address; `create` makes a parallel's next lane or a step's error lane."""
    if address == ROOT:
        return tree.blocks
    parts = address.split("/")
    owner, _ = find(tree, parts[0])
    if parts[1:] == ["error"]:
        if owner.on_error is None:
            if not create:
                raise BlockEditError(f'Step "{owner.key}" has no error path.')
            owner.on_error = []
        return owner.on_error
    if len(parts) == 3 and parts[1] == "branch" and owner.lanes is not None:
        for lane in owner.lanes:
            if lane.label == parts[2]:
                return lane.blocks
        raise BlockEditError(f'Step "{owner.key}" has no "{parts[2]}" branch.')
    fans_out = branching(owner.step)[2]
    if len(parts) == 3 and parts[1] == "lane" and parts[2].isdigit() and owner.lanes is not None and fans_out:
        position = int(parts[2])
        if position < len(owner.lanes):
            return owner.lanes[position].blocks
        if position == len(owner.lanes) and create:
            owner.lanes.append(Lane(""))
            return owner.lanes[-1].blocks
    if len(parts) == 3 and parts[1] == "branch" and owner.lanes is None:
        labels, _, _ = branching(owner.step)
        if parts[2] in labels and create:
            # Turning branches on for a step that may branch (an approval, a classification).
            owner.lanes = [Lane(label) for label in labels]
            return next(lane.blocks for lane in owner.lanes if lane.label == parts[2])
    raise BlockEditError(f'There is no place "{address}" in this draft.')


def _prune(tree: Tree) -> None:
    """Drop what an edit left empty and meaningless: parallel lanes without steps, error lanes without
    steps, and the lanes of an optionally branching step when none has a step."""
    for block, _ in list(walk(tree.blocks)):
        _, always, fans_out = branching(block.step)
        if block.lanes is not None:
            if fans_out:
                block.lanes = [lane for lane in block.lanes if lane.blocks]
            elif not always and not any(lane.blocks for lane in block.lanes):
                block.lanes = None
        if block.on_error is not None and not block.on_error and not block.error_continues:
            block.on_error = None


def _removed_from(place: Place) -> None:
    """An error lane whose last step was removed goes away (rather than turning into "ignore failures")."""
    if place.parent is not None and place.lane.endswith("/error") and not place.siblings:
        place.parent.on_error = None


# --- edits ------------------------------------------------------------------------------------------------

_KEY_STEMS = {
    "llm.extract": "extract",
    "llm.generate": "generate",
    "llm.classify": "classify",
    "data.transform": "transform",
    "logic.if": "check",
    "logic.switch": "route",
    "flow.parallel": "parallel",
    "flow.foreach": "for_each",
    "flow.subworkflow": "subworkflow",
    "util.delay": "wait",
    "human.approval": "approval",
    "http.request": "http_call",
}


def keys_of(tree: Tree) -> set[str]:
    return {block.key for block, _ in walk(tree.blocks)}


def key_new(taken: set[str], step_type: str) -> str:
    """A fresh, readable step key for a step of `step_type` (extract, extract_2, ...)."""
    stem = _KEY_STEMS.get(step_type) or re.sub(r"\W+", "_", step_type.split(".")[-1]).strip("_") or "step"
    return key_next(taken, stem)


def key_next(taken: set[str], stem: str) -> str:
    """`stem` if free, else the first free `stem_2`, `stem_3`, ..."""
    if stem not in taken:
        return stem
    return next(f"{stem}_{n}" for n in itertools.count(2) if f"{stem}_{n}" not in taken)


def block_insert(tree: Tree, *, lane: str, index: int, step: dict[str, Any]) -> Block:
    """Insert a new step at `index` of `lane` (clamped to the lane's ends)."""
    if step.get("key") in keys_of(tree):
        raise BlockEditError(f'A step with the key "{step["key"]}" exists already.')
    siblings = _lane_list(tree, lane, create=True)
    block = Block(step=_plain_step(step), lanes=new_lanes(step))
    siblings.insert(max(0, min(index, len(siblings))), block)
    return block


def block_delete(tree: Tree, *, key: str) -> Block:
    """Remove a step and everything in its lanes."""
    block, place = find(tree, key)
    place.siblings.pop(place.index)
    _removed_from(place)
    _prune(tree)
    if tree.settings.get("output") in {inner.key for inner, _ in walk([block])}:
        del tree.settings["output"]  # the run's output falls back to its final steps, never to a missing step
    return block


def _contains(block: Block, other: list[Block]) -> bool:
    return any(candidate is other for candidate, _ in lists_under(block))


def lists_under(block: Block) -> Iterator[tuple[list[Block], None]]:
    """Every lane list inside `block`, however deep (the places it cannot be moved into)."""
    for lane in block.lanes or []:
        yield lane.blocks, None
        for child in lane.blocks:
            yield from lists_under(child)
    if block.on_error is not None:
        yield block.on_error, None
        for child in block.on_error:
            yield from lists_under(child)


def block_move(tree: Tree, *, key: str, direction: str) -> None:
    """Move a step one place "up" or "down" in its lane; at a lane's end it steps out of the lane, to just
    before (up) or after (down) the step that owns the lane."""
    block, place = find(tree, key)
    step = -1 if direction == "up" else 1
    target = place.index + step
    if 0 <= target < len(place.siblings):
        place.siblings[place.index], place.siblings[target] = place.siblings[target], place.siblings[place.index]
        return
    if place.parent is None:
        raise BlockEditError(
            f'"{block.step.get("name") or key}" is already the {"first" if step < 0 else "last"} step.'
        )
    place.siblings.pop(place.index)
    _removed_from(place)
    _, owner_place = find(tree, place.parent.key)
    owner_place.siblings.insert(owner_place.index + (0 if step < 0 else 1), block)
    _prune(tree)


def block_move_to(tree: Tree, *, key: str, lane: str, index: int | None = None) -> None:
    """Move a step (with its lanes) into another lane, at `index` or at the end."""
    block, place = find(tree, key)
    if lane != ROOT and lane.split("/")[0] == key:
        raise BlockEditError("A step cannot move into its own branches.")
    destination = _lane_list(tree, lane, create=True)
    if _contains(block, destination):
        raise BlockEditError("A step cannot move into its own branches.")
    place.siblings.pop(place.index)
    _removed_from(place)
    if index is None:
        destination.append(block)
    else:
        if destination is place.siblings and index > place.index:
            index -= 1
        destination.insert(max(0, min(index, len(destination))), block)
    _prune(tree)


_REFERENCE = r"\bsteps\.{}\b"


def rename_references(value: Any, renames: Mapping[str, str]) -> Any:
    """`value` with every `steps.<old>` reference in its strings rewritten to `steps.<new>`."""
    if isinstance(value, str):
        for old, new in renames.items():
            value = re.sub(_REFERENCE.format(re.escape(old)), f"steps.{new}", value)
        return value
    if isinstance(value, list):
        return [rename_references(item, renames) for item in value]
    if isinstance(value, dict):
        return {name: rename_references(item, renames) for name, item in value.items()}
    return value


def block_duplicate(tree: Tree, *, key: str) -> Block:
    """A copy of a step and its lanes right after it, with fresh keys; references inside the copy to steps
    of the copy follow the new keys."""
    block, place = find(tree, key)
    copied = copy.deepcopy(block)
    taken = keys_of(tree)
    renames: dict[str, str] = {}
    for inner, _ in walk([copied]):
        renames[inner.key] = key_next(taken, re.sub(r"_\d+$", "", inner.key))
        taken.add(renames[inner.key])
    for inner, _ in walk([copied]):
        old_key = inner.key
        inner.step = rename_references(inner.step, renames)
        inner.step["key"] = renames[old_key]
    if copied.step.get("name"):
        copied.step["name"] = f"{copied.step['name']} (copy)"
    place.siblings.insert(place.index + 1, copied)
    return copied


def block_rekey(tree: Tree, *, key: str, new_key: str) -> None:
    """Rename a step's key and every reference to it (`steps.<key>` in any step's settings)."""
    if new_key == key:
        return
    if not new_key.isidentifier() or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", new_key):
        raise BlockEditError("A step key is a name of letters, digits and _ that does not start with a digit.")
    if new_key in keys_of(tree):
        raise BlockEditError(f'A step with the key "{new_key}" exists already.')
    block, _ = find(tree, key)
    for other, _ in walk(tree.blocks):
        other.step = rename_references(other.step, {key: new_key})
    block.step["key"] = new_key
    if tree.settings.get("output") == key:
        tree.settings["output"] = new_key


def block_step_replace(tree: Tree, *, key: str, step: dict[str, Any]) -> None:
    """Replace a step's settings (not its key or type). A branching step whose branch labels change keeps
    the lanes it still has; a lane with steps cannot lose its branch."""
    block, _ = find(tree, key)
    new_step = _plain_step({**step, "key": block.key, "type": block.type})
    labels, _, fans_out = branching(new_step)
    if block.lanes is not None and not fans_out:
        by_label = {lane.label: lane for lane in block.lanes}
        lost = [label for label, lane in by_label.items() if lane.blocks and label not in labels]
        if lost:
            raise BlockEditError(
                f'The "{lost[0]}" branch still has steps: move or delete them before removing the branch.'
            )
        block.lanes = [by_label.get(label) or Lane(label) for label in labels]
    block.step = new_step


ERROR_MODES = {
    "fail": "Stop the run (the default)",
    "ignore": "Ignore the failure and continue",
    "continue": "Run the error steps, then continue",
    "stop": "Run the error steps, then stop this path",
}


def block_error_mode(block: Block) -> str:
    """How a step's failure is handled, as one of ERROR_MODES."""
    if block.on_error is None:
        return "fail"
    if not block.on_error:
        return "ignore" if block.error_continues else "fail"
    return "continue" if block.error_continues else "stop"


def block_error_mode_set(tree: Tree, *, key: str, mode: str) -> None:
    """Choose what a failure of the step does; error steps are kept unless the mode drops them, which is
    refused while the lane has steps (nothing is deleted by a setting)."""
    if mode not in ERROR_MODES:
        raise BlockEditError(f"Choose one of: {', '.join(ERROR_MODES)}.")
    block, _ = find(tree, key)
    has_steps = bool(block.on_error)
    if mode in ("fail", "ignore") and has_steps:
        raise BlockEditError("The error path still has steps: delete or move them first.")
    if mode == "fail":
        block.on_error = None
    elif mode == "ignore":
        block.on_error, block.error_continues = [], True
    else:
        block.on_error = block.on_error if block.on_error is not None else []
        block.error_continues = mode == "continue"


def block_wait_set(tree: Tree, *, key: str, wait: str) -> None:
    """For a parallel block: continue after "all" lanes or after the first ("any")."""
    if wait not in ("all", "any"):
        raise BlockEditError('Choose "all" or "any".')
    block, _ = find(tree, key)
    block.wait = wait
