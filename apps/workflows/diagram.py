"""The workflow diagram: a server-side layout of a workflow graph, rendered as SVG by `_diagram.html`.

Two layouts share one output (`Diagram`):

- **Blocks** (the usual case): a recursive *compound* layout over the builder's block tree
  (`apps/workflows/blocks.py`). A sequence stacks vertically on one axis; a branching block puts its lanes
  side by side under it (its first lane straight below it, so the main path is a spine down the left),
  each lane as wide as its widest content, and a join bar below where the lanes meet and continue; an
  error path is a side lane to the right of everything else of its block, entered by a dashed "on error"
  edge, and either joins the others or ends at a stop marker. Two passes over the
  tree (measure bottom-up, place top-down), so the work is linear in the number of steps, and nothing
  depends on iteration order beyond the tree's own, so the same graph always yields the same diagram.
  By construction no two boxes overlap and no edge crosses a box: every lane owns a column of its own,
  and edges only run inside the columns and gaps of the structure they belong to.
- **Graph** (a fallback for graphs that are not block-structured): longest-path layers in topological
  order, with virtual slots for edges that skip layers so that they pass between boxes, and a one-pass
  barycentre ordering inside a layer. Cycles are broken at the earliest step in the graph's step order;
  their closing edges are drawn as loops on the right. Unreadable steps and edges are left out (and
  counted in the summary) rather than failing the page.

All coordinates are integers in SVG user units, with the origin at the top left.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from apps.steps.base import StepType
from apps.steps.registry import step_types
from apps.workflows.blocks import Block, NotBlockStructured, Tree, tree_from_graph

NODE_W, NODE_H = 200, 56
MARGIN = 24
GAP_Y = 40  # between consecutive blocks of a sequence: room for an arrow
LANE_GAP = 32  # between sibling lanes
ERROR_GAP = 40  # between a block's main lanes and its error lane: wider, so the side lane reads as apart
BRANCH_GAP = 60  # from a branching node to the top of its lanes: the bend, then the branch label
BRANCH_BEND = 18  # where branch edges turn sideways, below the node
LABEL_RISE = 22  # a branch label's baseline above its lane's top, clear of the next node's state badge
JOIN_GAP = 28  # from the longest lane's end to its join bar
JOIN_H = 6
JOIN_OVERHANG = 12
EMPTY_LANE_W, EMPTY_LANE_H = 140, 24  # wide enough for two neighbouring 16-character labels
STOP_GAP, STOP_R = 20, 7
LANE_LABEL_CHARS = 16

GRAPH_GAP_X = 48
GRAPH_GAP_Y = 72
SLOT_W = 16  # the width a skipping edge reserves in each layer it passes through
LOOP_LABEL_ROOM = 64  # right of the steps: the loops of cycles and their labels

TEXT_PAD = 14  # left padding of node text, after the category stripe
TEXT_ROOM = NODE_W - TEXT_PAD - 16  # a little inside the text clip, which ends 8 px before the border
TITLE_PX, SUBTITLE_PX = 13, 12  # keep in step with static/css/diagram.css

RUNS_ANOTHER_WORKFLOW = {"flow.foreach": "foreach", "flow.subworkflow": "subworkflow"}
CATEGORIES = ("ai", "data", "logic", "flow", "people", "connectors")


# --- the output --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """A step's box. `title`/`subtitle` are the full texts (for `<title>`); `*_text` are fitted to the box.
    `category` is a CSS-safe slug ("ai", "data", ... or "unknown"); `kind` is "step", "branch",
    "parallel", "foreach" or "subworkflow" (the last two are drawn framed)."""

    key: str
    x: int
    y: int
    title: str
    subtitle: str
    type_name: str
    category: str
    kind: str
    title_text: str
    subtitle_text: str
    w: int = NODE_W
    h: int = NODE_H

    @property
    def transform(self) -> str:
        return f"translate({self.x} {self.y})"

    @property
    def framed(self) -> bool:
        return self.kind in RUNS_ANOTHER_WORKFLOW.values()

    # Node-local geometry for the template (the CSP rules out computing it in a style attribute).
    @property
    def text_x(self) -> int:
        return TEXT_PAD

    @property
    def title_y(self) -> int:
        return self.h // 2 - 4

    @property
    def subtitle_y(self) -> int:
        return self.h // 2 + 15

    @property
    def accent_h(self) -> int:
        return self.h - 20

    @property
    def frame_w(self) -> int:
        return self.w - 6

    @property
    def frame_h(self) -> int:
        return self.h - 6


@dataclass(frozen=True)
class Edge:
    """A connection drawn as an SVG path `d`. `kind` is "next", "branch" or "error". `points` is the polyline
    the path follows (for curves, only its ends); `source`/`target` are step keys, "" for a join or stop."""

    d: str
    kind: str
    points: tuple[tuple[int, int], ...]
    source: str = ""
    target: str = ""
    label: str = ""
    label_x: int = 0
    label_y: int = 0


@dataclass(frozen=True)
class Join:
    """A bar where lanes meet and continue (or end, at the end of the workflow). `wait` is "all" or "any"
    for a parallel block's lanes, "" for branches; `label` says so in words."""

    x: int
    y: int
    w: int
    label: str
    wait: str = ""
    h: int = JOIN_H


@dataclass(frozen=True)
class Stop:
    """Where an error path that does not continue ends (centre and radius)."""

    x: int
    y: int
    r: int = STOP_R
    label: str = "stops"

    @property
    def label_x(self) -> int:
        return self.x + self.r + 6

    @property
    def label_y(self) -> int:
        return self.y + 4


@dataclass(frozen=True)
class Diagram:
    """A laid-out workflow. `layout` is "blocks", "graph" or "empty"; `summary` is one or two sentences for
    screen readers (the SVG's `<desc>`), `caption` a short visible caption."""

    width: int
    height: int
    nodes: list[Node] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    joins: list[Join] = field(default_factory=list)
    stops: list[Stop] = field(default_factory=list)
    summary: str = ""
    caption: str = ""
    layout: str = "empty"

    # The text clip shared by every node (in node-local coordinates), so no name spills out of its box.
    clip_x: int = TEXT_PAD
    clip_w: int = NODE_W - TEXT_PAD - 8
    clip_h: int = NODE_H


# --- step facts --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Facts:
    title: str
    type_name: str
    category: str
    subtitle: str
    runs: str  # "foreach", "subworkflow" or ""
    fans_out: bool


class _Catalog:
    """Step type facts, read once per diagram (the registry hands out a fresh sorted dict on every call)."""

    def __init__(self) -> None:
        self.types: dict[str, type[StepType]] = step_types()

    def facts(self, step: Mapping[str, Any]) -> _Facts:
        key = str(step.get("key", ""))
        title = _one_line(step.get("name")) or key
        slug = step.get("type")
        step_type = self.types.get(slug) if isinstance(slug, str) else None
        if step_type is None:
            type_name = f"Unknown type {_one_line(slug)}".strip() if slug else "No type"
            return _Facts(title, type_name, "unknown", type_name, "", False)
        category = re.sub(r"[^a-z0-9-]", "", step_type.category.lower())
        subtitle = step_type.name
        runs = RUNS_ANOTHER_WORKFLOW.get(step_type.slug, "")
        if runs:
            config = step.get("config")
            workflow = _one_line(config.get("workflow")) if isinstance(config, Mapping) else ""
            target = workflow or "another workflow"
            subtitle = f"runs {target} for each item" if runs == "foreach" else f"runs {target}"
        return _Facts(
            title,
            step_type.name,
            category if category in CATEGORIES else "unknown",
            subtitle,
            runs,
            bool(step_type.fans_out),
        )

    def node(self, step: Mapping[str, Any], x: int, y: int, kind: str | None = None) -> Node:
        facts = self.facts(step)
        return Node(
            key=str(step.get("key", "")),
            x=x,
            y=y,
            title=facts.title,
            subtitle=facts.subtitle,
            type_name=facts.type_name,
            category=facts.category,
            kind=kind or facts.runs or "step",
            title_text=fit_text(facts.title, TEXT_ROOM, TITLE_PX, bold=True),
            subtitle_text=fit_text(facts.subtitle, TEXT_ROOM, SUBTITLE_PX),
        )


def _one_line(value: Any) -> str:
    return " ".join(str(value).split()) if value is not None else ""


# Rough advance widths in em for a sans-serif face. Overestimating a little costs a few characters; the
# template's clip path catches what an underestimate would let spill.
_NARROW = frozenset("fijlrtI!|.,:;'\"()[]{} -")
_WIDE = frozenset("mwMW@%&")
_SYMBOLS = frozenset("<>=+~^*#$_?/\\")


def _char_em(char: str) -> float:
    if char in _NARROW:
        return 0.34
    if char in _WIDE:
        return 0.9
    if char in _SYMBOLS:
        return 0.8
    if unicodedata.east_asian_width(char) in ("W", "F"):
        return 1.0
    if char.isupper():
        return 0.72
    return 0.6


def text_width(text: str, font_px: int, *, bold: bool = False) -> int:
    """The estimated width of `text` in pixels (see `_char_em`)."""
    return round(sum(_char_em(char) for char in text) * font_px * (1.1 if bold else 1.0))


def fit_text(text: str, max_px: int, font_px: int, *, bold: bool = False) -> str:
    """`text` on one line, cut with an ellipsis so that its estimated width fits `max_px`."""
    budget = max_px / (font_px * (1.1 if bold else 1.0))
    widths = [_char_em(char) for char in text]
    if sum(widths) <= budget:
        return text
    budget -= 1.0  # the ellipsis
    used = 0.0
    for position, width in enumerate(widths):
        if used + width > budget:
            return text[:position].rstrip() + "…"
        used += width
    return text


def _short(label: str) -> str:
    label = _one_line(label)
    return label if len(label) <= LANE_LABEL_CHARS else label[: LANE_LABEL_CHARS - 1] + "…"


# --- paths -------------------------------------------------------------------------------------------------


def _polyline(points: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """`points` without repeats and without middle points of straight runs."""
    kept: list[tuple[int, int]] = []
    for point in points:
        if kept and kept[-1] == point:
            continue
        if len(kept) >= 2:
            (ax, ay), (bx, by) = kept[-2], kept[-1]
            if (ax == bx == point[0]) or (ay == by == point[1]):
                kept[-1] = point
                continue
        kept.append(point)
    return tuple(kept)


def _rounded_path(points: tuple[tuple[int, int], ...], radius: int = 8) -> str:
    """An orthogonal polyline as a path with rounded corners; the ends stay exactly where they are."""
    x, y = points[0]
    parts = [f"M{x} {y}"]
    for index in range(1, len(points) - 1):
        (ax, ay), (bx, by), (cx, cy) = points[index - 1], points[index], points[index + 1]
        before = min(radius, (abs(bx - ax) + abs(by - ay)) // 2)
        after = min(radius, (abs(cx - bx) + abs(cy - by)) // 2)
        corner = min(before, after)
        enter = (bx - _sign(bx - ax) * corner, by - _sign(by - ay) * corner)
        leave = (bx + _sign(cx - bx) * corner, by + _sign(cy - by) * corner)
        parts.append(f"L{enter[0]} {enter[1]}Q{bx} {by} {leave[0]} {leave[1]}")
    x, y = points[-1]
    parts.append(f"L{x} {y}")
    return "".join(parts)


def _sign(value: int) -> int:
    return (value > 0) - (value < 0)


# --- the block layout --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Size:
    width: int
    height: int
    axis: int  # x of the flow's vertical axis, from the left edge


@dataclass(frozen=True)
class _Shape:
    """A measured block: its size and where its lanes sit, relative to its top left corner."""

    size: _Size
    lane_lefts: tuple[int, ...] = ()
    lane_sizes: tuple[_Size, ...] = ()
    error_left: int = 0
    error_size: _Size | None = None
    rows_height: int = 0
    join: bool = False


_EMPTY_LANE = _Size(EMPTY_LANE_W, EMPTY_LANE_H, EMPTY_LANE_W // 2)
_PLAIN = _Shape(_Size(NODE_W, NODE_H, NODE_W // 2))

# (x, y, step key or "" for a join): where a laid-out sequence's flow leaves it, always on its axis.
_Exit = tuple[int, int, str]


class _BlockLayout:
    def __init__(self, catalog: _Catalog) -> None:
        self.catalog = catalog
        self.shapes: dict[int, _Shape] = {}
        self.nodes: list[Node] = []
        self.edges: list[Edge] = []
        self.joins: list[Join] = []
        self.stops: list[Stop] = []

    # measuring, bottom-up

    def measure_sequence(self, blocks: list[Block]) -> _Size:
        if not blocks:
            return _EMPTY_LANE
        left = right = height = 0
        for block in blocks:
            size = self.measure_block(block).size
            left, right = max(left, size.axis), max(right, size.width - size.axis)
            height += size.height
        return _Size(left + right, height + GAP_Y * (len(blocks) - 1), left)

    def measure_block(self, block: Block) -> _Shape:
        lanes = block.lanes or []
        if not lanes and block.on_error is None:
            self.shapes[id(block)] = _PLAIN
            return _PLAIN
        lane_sizes = tuple(self.measure_sequence(lane.blocks) for lane in lanes)
        if lane_sizes:
            relative_lefts, cursor = [], 0
            for size in lane_sizes:
                relative_lefts.append(cursor)
                cursor += size.width + LANE_GAP
            row_width = cursor - LANE_GAP
            # The node sits over its first lane, so the main path runs down the left edge and the other lanes
            # open to the right: the start of the flow is what a narrow screen shows first, before scrolling.
            row_axis = lane_sizes[0].axis
            main_height = max(size.height for size in lane_sizes)
        else:  # only an error lane: the main path passes straight down under the node
            relative_lefts, row_width, row_axis, main_height = [], NODE_W, NODE_W // 2, 0
        row_offset = max(0, NODE_W // 2 - row_axis)
        axis = row_offset + row_axis
        main_right = max(row_offset + row_width, axis + NODE_W // 2)
        width, error_left, error_size, error_height = main_right, 0, None, 0
        if block.on_error is not None:
            error_size = self.measure_sequence(block.on_error)
            error_left = main_right + ERROR_GAP
            width = error_left + error_size.width
            error_height = error_size.height + (0 if block.error_continues else STOP_GAP + 2 * STOP_R)
        join = bool(lanes) or (block.on_error is not None and block.error_continues)
        rows_height = max(main_height, error_height)
        height = NODE_H + BRANCH_GAP + rows_height + (JOIN_GAP + JOIN_H if join else 0)
        shape = _Shape(
            size=_Size(width, height, axis),
            lane_lefts=tuple(row_offset + left for left in relative_lefts),
            lane_sizes=lane_sizes,
            error_left=error_left,
            error_size=error_size,
            rows_height=rows_height,
            join=join,
        )
        self.shapes[id(block)] = shape
        return shape

    # placing, top-down

    def edge(self, kind: str, points: list[tuple[int, int]], source: str, target: str, **label: Any) -> None:
        line = _polyline(points)
        self.edges.append(Edge(d=_rounded_path(line), kind=kind, points=line, source=source, target=target, **label))

    def place_sequence(self, blocks: list[Block], left: int, top: int, size: _Size) -> _Exit | None:
        axis = left + size.axis
        previous: _Exit | None = None
        for block in blocks:
            shape = self.shapes[id(block)]
            if previous is not None:
                self.edge("next", [previous[:2], (axis, top)], previous[2], block.key)
            previous = self.place_block(block, axis - shape.size.axis, top, shape)
            top += shape.size.height + GAP_Y
        return previous

    def place_block(self, block: Block, left: int, top: int, shape: _Shape) -> _Exit:
        axis = left + shape.size.axis
        lanes = block.lanes or []
        fans_out = self.catalog.facts(block.step).fans_out
        kind = ("parallel" if fans_out else "branch") if lanes else None
        self.nodes.append(self.catalog.node(block.step, axis - NODE_W // 2, top, kind))
        node_bottom = top + NODE_H
        lanes_top = node_bottom + BRANCH_GAP
        join_top = lanes_top + shape.rows_height + JOIN_GAP
        arrivals: list[int] = []
        for index, (lane, offset, size) in enumerate(zip(lanes, shape.lane_lefts, shape.lane_sizes, strict=True)):
            lane_left = left + offset
            lane_axis = lane_left + size.axis
            first = lane.blocks[0].key if lane.blocks else ""
            bend = node_bottom + BRANCH_BEND
            self.edge(
                "branch",
                [(axis, node_bottom), (axis, bend), (lane_axis, bend), (lane_axis, lanes_top if first else join_top)],
                block.key,
                first,
                label=_short(lane.label) if lane.label else f"lane {index + 1}",
                label_x=lane_axis,
                label_y=lanes_top - LABEL_RISE,
            )
            if lane.blocks:
                end = self.place_sequence(lane.blocks, lane_left, lanes_top, size)
                assert end is not None
                self.edge("next", [end[:2], (lane_axis, join_top)], end[2], "")
            arrivals.append(lane_axis)
        if not lanes and shape.join:
            self.edge("next", [(axis, node_bottom), (axis, join_top)], block.key, "")
            arrivals.append(axis)
        if block.on_error is not None:
            assert shape.error_size is not None
            arrivals += self.place_error_lane(block, left, top, shape, axis, lanes_top, join_top)
        if not shape.join:
            return axis, node_bottom, block.key
        low, high = min([axis, *arrivals]) - JOIN_OVERHANG, max([axis, *arrivals]) + JOIN_OVERHANG
        wait = block.wait if fans_out and lanes else ""
        label = {
            "all": "The lanes meet: the flow continues when all of them have finished",
            "any": "The lanes meet: the flow continues when the first of them has finished",
        }.get(wait, "The paths meet and continue")
        self.joins.append(Join(x=low, y=join_top, w=high - low, label=label, wait=wait))
        return axis, join_top + JOIN_H, ""

    def place_error_lane(
        self, block: Block, left: int, top: int, shape: _Shape, axis: int, lanes_top: int, join_top: int
    ) -> list[int]:
        """Draw `block`'s error lane; returns the x where it arrives at the block's join (none if it stops)."""
        assert block.on_error is not None and shape.error_size is not None
        size = shape.error_size
        lane_left = left + shape.error_left
        lane_axis = lane_left + size.axis
        stop_y = lanes_top + size.height + STOP_GAP + STOP_R
        start = (axis + NODE_W // 2, top + NODE_H // 2)
        first = block.on_error[0].key if block.on_error else ""
        # Into the lane's first step; an empty lane goes straight to where it continues or stops.
        entry = lanes_top if first else join_top if block.error_continues else stop_y - STOP_R
        self.edge(
            "error",
            [start, (lane_axis, start[1]), (lane_axis, entry)],
            block.key,
            first,
            label="on error",
            label_x=(start[0] + lane_axis) // 2,
            label_y=start[1] - 8,
        )
        end = self.place_sequence(block.on_error, lane_left, lanes_top, size) if block.on_error else None
        if not block.error_continues:
            self.stops.append(Stop(x=lane_axis, y=stop_y))
            if end is not None:
                self.edge("next", [end[:2], (lane_axis, stop_y - STOP_R)], end[2], "")
            return []
        if end is not None:
            self.edge("next", [end[:2], (lane_axis, join_top)], end[2], "")
        return [lane_axis]


def diagram_for_tree(tree: Tree) -> Diagram:
    """The compound block layout of `tree` (see the module docstring)."""
    catalog = _Catalog()
    if not tree.blocks:
        return _empty("This workflow has no steps yet.")
    layout = _BlockLayout(catalog)
    size = layout.measure_sequence(tree.blocks)
    layout.place_sequence(tree.blocks, MARGIN, MARGIN, size)
    count = len(layout.nodes)
    return Diagram(
        width=size.width + 2 * MARGIN,
        height=size.height + 2 * MARGIN,
        nodes=layout.nodes,
        edges=layout.edges,
        joins=layout.joins,
        stops=layout.stops,
        summary=_tree_summary(tree, catalog, count),
        caption=f"Workflow diagram: {_steps(count)}, top to bottom.",
        layout="blocks",
    )


# --- the summary -------------------------------------------------------------------------------------------

SUMMARY_TOP_ITEMS = 12
SUMMARY_LANE_ITEMS = 3


def _steps(count: int) -> str:
    return f"{count} step" if count == 1 else f"{count} steps"


def _quoted(text: str) -> str:
    return f"“{text}”"


def _describe_sequence(blocks: list[Block], catalog: _Catalog, depth: int, limit: int) -> str:
    parts = [_describe_block(block, catalog, depth) for block in blocks[:limit]]
    if len(blocks) > limit:
        rest = len(blocks) - limit
        parts.append(f"{rest} more step{'s' if rest != 1 else ''}")
    return ", then ".join(parts)


def _describe_lanes(block: Block, catalog: _Catalog, depth: int) -> str:
    described = []
    for index, lane in enumerate(block.lanes or []):
        name = _quoted(lane.label) if lane.label else f"lane {index + 1}"
        steps = _describe_sequence(lane.blocks, catalog, depth + 1, SUMMARY_LANE_ITEMS) if lane.blocks else "no steps"
        described.append(f"{name}: {steps}")
    return "; ".join(described)


def _describe_block(block: Block, catalog: _Catalog, depth: int) -> str:
    facts = catalog.facts(block.step)
    lanes = block.lanes or []
    if lanes and facts.fans_out:
        wait = "the first to finish" if block.wait == "any" else "all of them"
        text = f"{_quoted(facts.title)} running {len(lanes)} lane{'s' if len(lanes) != 1 else ''} at once"
        text += f" ({_describe_lanes(block, catalog, depth)}) and waiting for {wait}" if depth == 0 else ""
    elif lanes:
        article = {"logic": "a decision", "people": "an approval", "ai": "a classification"}.get(
            facts.category, "a branching step"
        )
        text = f"{article} {_quoted(facts.title)} with {len(lanes)} branch{'es' if len(lanes) != 1 else ''}"
        text += f" ({_describe_lanes(block, catalog, depth)})" if depth == 0 else ""
    elif facts.runs:
        text = f"{facts.title}, which {facts.subtitle}"
    else:
        text = facts.title
    if block.on_error is not None:
        if not block.on_error:
            text += " (a failure is ignored)"
        else:
            then = "continue" if block.error_continues else "stop"
            steps = _describe_sequence(block.on_error, catalog, depth + 1, SUMMARY_LANE_ITEMS)
            text += f" (on error: {steps}, then {then})"
    return text


def _tree_summary(tree: Tree, catalog: _Catalog, count: int) -> str:
    return f"{_steps(count)}: {_describe_sequence(tree.blocks, catalog, 0, SUMMARY_TOP_ITEMS)}."


# --- the graph layout (fallback) ---------------------------------------------------------------------------


@dataclass
class _Graph:
    """The drawable part of an arbitrary graph: steps with unique string keys, edges between them."""

    steps: list[Mapping[str, Any]]
    index: dict[str, int]
    edges: list[tuple[int, int, str]]  # (source, target, when) by step position
    skipped_steps: int = 0
    skipped_edges: int = 0


def _readable_graph(graph: Any) -> _Graph | str:
    """The drawable part of `graph`, or why nothing of it can be drawn."""
    if not isinstance(graph, Mapping):
        return "it is not a workflow graph"
    raw_steps = graph.get("steps")
    if not isinstance(raw_steps, list):
        return "it has no list of steps"
    steps: list[Mapping[str, Any]] = []
    index: dict[str, int] = {}
    skipped_steps = 0
    for step in raw_steps:
        key = step.get("key") if isinstance(step, Mapping) else None
        if isinstance(key, str) and key and key not in index:
            index[key] = len(steps)
            steps.append(step)
        else:
            skipped_steps += 1
    if raw_steps and not steps:
        return "none of its steps has a usable key"
    edges: list[tuple[int, int, str]] = []
    skipped_edges = 0
    if "edges" not in graph:  # the engine runs such a graph in list order
        edges = [(position, position + 1, "success") for position in range(len(steps) - 1)]
    else:
        raw_edges = graph.get("edges")
        if not isinstance(raw_edges, list):
            raw_edges, skipped_edges = [], 1
        for edge in raw_edges:
            source = edge.get("from") if isinstance(edge, Mapping) else None
            target = edge.get("to") if isinstance(edge, Mapping) else None
            when = edge.get("when", "success") if isinstance(edge, Mapping) else None
            if (
                isinstance(when, str)
                and isinstance(source, str)
                and isinstance(target, str)
                and source in index
                and target in index
            ):
                edges.append((index[source], index[target], when))
                continue
            skipped_edges += 1
    return _Graph(steps, index, edges, skipped_steps, skipped_edges)


@dataclass
class _Ranking:
    order: list[int]  # steps in topological order (cycles broken)
    layer: list[int]
    forward: list[tuple[int, int, str]]
    backward: list[tuple[int, int, str]]


def _rank(count: int, edges: list[tuple[int, int, str]]) -> _Ranking:
    """Kahn's topological order with longest-path layers. When only cycles remain, the earliest unplaced step
    (in step order) goes next; edges into steps already placed are the cycles' closing edges."""
    outgoing: list[list[tuple[int, str]]] = [[] for _ in range(count)]
    waiting = [0] * count
    for source, target, when in edges:
        outgoing[source].append((target, when))
        waiting[target] += 1
    layer = [0] * count
    placed = [False] * count
    queue = deque(position for position in range(count) if waiting[position] == 0)
    order: list[int] = []
    forward: list[tuple[int, int, str]] = []
    backward: list[tuple[int, int, str]] = []
    next_unplaced = 0
    while len(order) < count:
        if not queue:
            while placed[next_unplaced]:
                next_unplaced += 1
            queue.append(next_unplaced)
        node = queue.popleft()
        if placed[node]:
            continue
        placed[node] = True
        order.append(node)
        for target, when in outgoing[node]:
            if placed[target]:
                backward.append((node, target, when))
                continue
            forward.append((node, target, when))
            layer[target] = max(layer[target], layer[node] + 1)
            waiting[target] -= 1
            if waiting[target] == 0:
                queue.append(target)
    return _Ranking(order, layer, forward, backward)


def _edge_style(when: str) -> tuple[str, str]:
    if when == "error":
        return "error", "on error"
    if when == "success":
        return "next", ""
    return "branch", _short(when)


def diagram_for_graph(graph: Any) -> Diagram:
    """The diagram of a workflow graph: the block layout when the graph is block-structured, else the layered
    graph layout. Never raises: a graph that cannot be read at all yields an empty diagram whose summary
    says so."""
    try:
        tree = tree_from_graph(graph)
    except (NotBlockStructured, TypeError, ValueError, KeyError, AttributeError, RecursionError):
        return _graph_diagram(graph)
    return diagram_for_tree(tree)


def _empty(summary: str) -> Diagram:
    return Diagram(width=0, height=0, summary=summary, caption=summary, layout="empty")


def _graph_diagram(raw: Any) -> Diagram:
    graph = _readable_graph(raw)
    if isinstance(graph, str):
        return _empty(f"This workflow's graph could not be drawn: {graph}.")
    if not graph.steps:
        return _empty("This workflow has no steps yet.")
    catalog = _Catalog()
    ranking = _rank(len(graph.steps), graph.edges)
    layer = ranking.layer
    # Edges between the same two steps are drawn once (their labels joined); error edges apart from others.
    grouped: dict[tuple[int, int, bool], list[str]] = {}
    for source, target, when in ranking.forward:
        grouped.setdefault((source, target, when == "error"), []).append(when)
    routes = list(grouped.items())
    incoming: dict[int, list[int]] = {}
    # A layer holds its steps and one slot per route that passes through it: (step, -1) or (-1, route).
    layers: list[list[tuple[int, int]]] = [[] for _ in range(max(layer) + 1)]
    for position in ranking.order:
        layers[layer[position]].append((position, -1))
    for number, ((source, target, _), _) in enumerate(routes):
        incoming.setdefault(target, []).append(number)
        for between in range(layer[source] + 1, layer[target]):
            layers[between].append((-1, number))
    # One barycentre sweep, top-down: an item sits near the mean column of what leads to it one layer up.
    step_column: dict[int, int] = {}
    slot_column: dict[tuple[int, int], int] = {}

    def above(number: int, depth: int) -> int:
        source = routes[number][0][0]
        return step_column[source] if layer[source] == depth - 1 else slot_column[(number, depth - 1)]

    def barycentre(item: tuple[int, int], depth: int) -> tuple[float, int]:
        step, number = item
        if step < 0:
            return float(above(number, depth)), len(graph.steps) + number
        columns = [above(route, depth) for route in incoming.get(step, [])]
        return (sum(columns) / len(columns) if columns else float(step)), step

    widest = max(_layer_width(items) for items in layers)
    step_x: dict[int, int] = {}
    slot_x: dict[tuple[int, int], int] = {}
    for depth, items in enumerate(layers):
        items.sort(key=functools.partial(barycentre, depth=depth))
        cursor = MARGIN + (widest - _layer_width(items)) // 2
        for column, (step, number) in enumerate(items):
            if step >= 0:
                step_column[step], step_x[step] = column, cursor
                cursor += NODE_W + GRAPH_GAP_X
            else:
                slot_column[(number, depth)], slot_x[(number, depth)] = column, cursor
                cursor += SLOT_W + GRAPH_GAP_X
    # Loops need the gap above the first layer and below the last: the drawing grows by one gap band.
    top = MARGIN + (GRAPH_GAP_Y // 2 if ranking.backward else 0)
    y_of = [_layer_y(layer[position], top) for position in range(len(graph.steps))]
    nodes = [catalog.node(graph.steps[position], step_x[position], y_of[position]) for position in ranking.order]
    edges: list[Edge] = []
    for number, ((source, target, is_error), whens) in enumerate(routes):
        shift = 20 if is_error else 0  # an error edge beside a plain one between the same steps
        through = [(step_x[source] + NODE_W // 2 + shift, y_of[source] + NODE_H)]
        for between in range(layer[source] + 1, layer[target]):
            middle = slot_x[(number, between)] + SLOT_W // 2
            through += [(middle, _layer_y(between, top)), (middle, _layer_y(between, top) + NODE_H)]
        through.append((step_x[target] + NODE_W // 2 + shift, y_of[target]))
        labels = list(dict.fromkeys(label for label in (_edge_style(when)[1] for when in whens) if label))
        (x1, y1), (x2, y2) = through[0], through[1]
        edges.append(
            Edge(
                d=_curved_path(through),
                kind="error" if is_error else "branch" if labels else "next",
                points=(through[0], through[-1]),
                source=str(graph.steps[source]["key"]),
                target=str(graph.steps[target]["key"]),
                label=", ".join(labels),
                label_x=(x1 + x2) // 2,
                label_y=(y1 + y2) // 2 + 4,
            )
        )
    right = MARGIN + widest
    for number, back in enumerate(ranking.backward):
        edges.append(_loop_edge(graph, step_x, y_of, back, number, right))
    loops = len(ranking.backward)
    return Diagram(
        width=right + MARGIN + (LOOP_LABEL_ROOM + 12 * min(loops, 6) if loops else 0),
        height=_layer_y(len(layers) - 1, top) + NODE_H + (top - MARGIN) + MARGIN,
        nodes=nodes,
        edges=edges,
        summary=_graph_summary(graph, ranking),
        caption="This workflow's connections are not plain branches and lanes, so it is drawn as a graph.",
        layout="graph",
    )


def _layer_width(items: list[tuple[int, int]]) -> int:
    widths = [NODE_W if step >= 0 else SLOT_W for step, _ in items]
    return sum(widths) + GRAPH_GAP_X * (len(widths) - 1) if widths else 0


def _layer_y(layer: int, top: int) -> int:
    return top + layer * (NODE_H + GRAPH_GAP_Y)


def _curved_path(points: list[tuple[int, int]]) -> str:
    """Vertical S-curves between layers, straight runs through the slots of skipped layers."""
    x, y = points[0]
    parts = [f"M{x} {y}"]
    for index in range(1, len(points)):
        (ax, ay), (bx, by) = points[index - 1], points[index]
        if ax == bx:
            parts.append(f"L{bx} {by}")
        else:
            middle = (ay + by) // 2
            parts.append(f"C{ax} {middle} {bx} {middle} {bx} {by}")
    return "".join(parts)


def _loop_edge(
    graph: _Graph,
    step_x: dict[int, int],
    y_of: list[int],
    back: tuple[int, int, str],
    number: int,
    right: int,
) -> Edge:
    """A cycle's closing edge, routed around everything: down into the gap below its source, right past
    every step (`right` is the rightmost box edge), up into the gap above its target and down into it, so
    that it crosses gaps only, never a step. `number` spreads the loops of one graph apart."""
    source, target, when = back
    kind, label = _edge_style(when)
    spread = (number % 6) * 6
    start = (step_x[source] + NODE_W - 24, y_of[source] + NODE_H)
    end = (step_x[target] + NODE_W - 24, y_of[target])
    outside = right + 20 + spread * 2
    below, above = start[1] + 16 + spread, end[1] - 16 - spread
    points = _polyline([start, (start[0], below), (outside, below), (outside, above), (end[0], above), end])
    return Edge(
        d=_rounded_path(points),
        kind=kind,
        points=points,
        source=str(graph.steps[source]["key"]),
        target=str(graph.steps[target]["key"]),
        label=f"{label}, back" if label else "back",
        # On the run into the target, where the labels of two loops cannot meet.
        label_x=(end[0] + outside) // 2,
        label_y=above + 4,
    )


def _graph_summary(graph: _Graph, ranking: _Ranking) -> str:
    count = len(graph.steps)
    starts = [str(graph.steps[p].get("name") or graph.steps[p]["key"]) for p in ranking.order if ranking.layer[p] == 0]
    connections = len(ranking.forward) + len(ranking.backward)
    text = (
        f"{_steps(count)}, drawn as a graph because their connections are not plain branches and lanes. "
        f"It starts at {', '.join(_quoted(_one_line(name)) for name in starts[:3])}"
        f"{' and more' if len(starts) > 3 else ''}; "
        f"{connections} connection{'s' if connections != 1 else ''}"
    )
    if ranking.backward:
        text += f", {len(ranking.backward)} of them back to an earlier step (a cycle)"
    text += "."
    if graph.skipped_steps or graph.skipped_edges:
        skipped_edges = graph.skipped_edges
        text += (
            f" Left out because they cannot be read: {_steps(graph.skipped_steps)}"
            f" and {skipped_edges} connection{'s' if skipped_edges != 1 else ''}."
        )
    return text


# --- the text outline --------------------------------------------------------------------------------------


def diagram_outline(graph: Any) -> list[dict[str, Any]]:
    """The diagram as a flat list for the accessible text version beside the SVG, in outline order:
    {depth, key, title, type_name, lane_label}. `lane_label` names the lane an item sits in ('If "true"',
    'Lane 2', 'On error', "" at the top level). An empty lane appears as one item with key "" and title
    "No steps", so the text says as much as the picture. For a graph drawn as a graph: every step at depth 0
    in layer order. An unreadable graph gives an empty list."""
    catalog = _Catalog()
    try:
        tree = tree_from_graph(graph)
    except (NotBlockStructured, TypeError, ValueError, KeyError, AttributeError, RecursionError):
        readable = _readable_graph(graph)
        if isinstance(readable, str):
            return []
        ranking = _rank(len(readable.steps), readable.edges)
        order = sorted(ranking.order, key=lambda position: (ranking.layer[position], position))
        return [_outline_item(readable.steps[position], catalog, 0, "") for position in order]
    items: list[dict[str, Any]] = []
    _outline_sequence(tree.blocks, catalog, 0, "", items)
    return items


def _outline_item(step: Mapping[str, Any], catalog: _Catalog, depth: int, lane_label: str) -> dict[str, Any]:
    facts = catalog.facts(step)
    return {
        "depth": depth,
        "key": str(step.get("key", "")),
        "title": facts.title,
        "type_name": facts.type_name,
        "lane_label": lane_label,
    }


def _outline_sequence(
    blocks: list[Block], catalog: _Catalog, depth: int, lane_label: str, items: list[dict[str, Any]]
) -> None:
    for block in blocks:
        item = _outline_item(block.step, catalog, depth, lane_label)
        items.append(item)
        for index, lane in enumerate(block.lanes or []):
            label = f'{item["type_name"]} "{lane.label}"' if lane.label else f"Lane {index + 1}"
            _outline_lane(lane.blocks, catalog, depth + 1, label, items, "No steps")
        if block.on_error is not None:
            label = "On error" if block.error_continues else "On error, then stop"
            _outline_lane(block.on_error, catalog, depth + 1, label, items, "No steps: a failure is ignored")


def _outline_lane(
    blocks: list[Block], catalog: _Catalog, depth: int, label: str, items: list[dict[str, Any]], empty: str
) -> None:
    if blocks:
        _outline_sequence(blocks, catalog, depth, label, items)
    else:
        items.append({"depth": depth, "key": "", "title": empty, "type_name": "", "lane_label": label})
