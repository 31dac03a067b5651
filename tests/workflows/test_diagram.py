"""The workflow diagram (apps/workflows/diagram.py, templates/workflows/_diagram.html): geometry that never
overlaps, edges that start and end on boxes, the same picture for the same graph, a graph fallback that
survives cycles and garbage, and a template that is CSP-clean, escaped and says run states in words.
Pure Python and templates: no database."""

from __future__ import annotations

import copy
import random
import re
from typing import Any

import pytest
from django.template.loader import render_to_string

from apps.workflows import blocks as b
from apps.workflows.blocks import Block, Lane, Tree
from apps.workflows.demo import CLAIMS_TRIAGE_GRAPH
from apps.workflows.diagram import (
    Diagram,
    diagram_for_graph,
    diagram_for_tree,
    diagram_outline,
    fit_text,
    text_width,
)
from tests.workflows.test_blocks import _random_blocks, check, transform

# --- graphs ------------------------------------------------------------------------------------------------


def step(key: str, step_type: str, name: str | None = None, **config: Any) -> dict[str, Any]:
    return {"key": key, "type": step_type, "config": config, **({"name": name} if name else {})}


def claims_tree() -> Tree:
    """The claims triage as analysts build it: nested decision, approval, error paths, parallel lanes."""
    return Tree(
        blocks=[
            Block(step("extract", "llm.extract", "Extract claim fields")),
            Block(
                check("check", "steps.extract.data.amount > 1000.0") | {"name": "Amount over 1000?"},
                lanes=[
                    Lane(
                        "true",
                        [
                            Block(
                                step("review", "human.approval", "Ask an adjuster", queue="claims"),
                                lanes=[
                                    Lane(
                                        "approved",
                                        [
                                            Block(
                                                step("pay", "http.request", "Book the payment"),
                                                on_error=[Block(step("tell_ops", "http.request", "Tell operations"))],
                                                error_continues=False,
                                            )
                                        ],
                                    ),
                                    Lane("rejected", []),
                                ],
                            )
                        ],
                    ),
                    Lane("false", [Block(transform("auto"))]),
                ],
            ),
            Block(
                step("fan", "flow.parallel", "Tell everyone"),
                lanes=[
                    Lane("", [Block(step("mail", "http.request", "Email the claimant"))]),
                    Lane("", [Block(step("each", "flow.foreach", "Update policies", workflow="policy-update"))]),
                ],
                wait="any",
            ),
            Block(step("archive", "flow.subworkflow", "Archive", workflow="claims-archive"), on_error=[]),
            Block(transform("done")),
        ]
    )


def nested_graph() -> dict[str, Any]:
    return b.graph_from_tree(claims_tree())


def not_block_structured() -> dict[str, Any]:
    """Two entry steps and an edge that skips a layer: valid for the engine, not as blocks."""
    return {
        "steps": [transform("a"), transform("z"), check("b"), transform("c"), transform("d"), transform("e")],
        "edges": [
            {"from": "a", "to": "b"},
            {"from": "z", "to": "c"},
            {"from": "b", "to": "c", "when": "true"},
            {"from": "b", "to": "d", "when": "false"},
            {"from": "c", "to": "e"},
            {"from": "a", "to": "e"},
            {"from": "d", "to": "e", "when": "error"},
        ],
    }


def sequence(count: int) -> dict[str, Any]:
    return {"steps": [transform(f"s{index}") for index in range(count)]}


def random_tree(seed: int) -> Tree:
    rng = random.Random(seed)
    return Tree(blocks=_random_blocks(rng, [], depth=3, length=rng.randint(1, 5)))


# --- geometry checks ---------------------------------------------------------------------------------------

Box = tuple[int, int, int, int]  # left, top, right, bottom


def node_boxes(diagram: Diagram) -> list[Box]:
    return [(node.x, node.y, node.x + node.w, node.y + node.h) for node in diagram.nodes]


def join_boxes(diagram: Diagram) -> list[Box]:
    return [(join.x, join.y, join.x + join.w, join.y + join.h) for join in diagram.joins]


def label_boxes(diagram: Diagram) -> list[Box]:
    """Edge labels as the template draws them: 12px bold, centred on (label_x, baseline label_y)."""
    boxes = []
    for edge in diagram.edges:
        if edge.label:
            half = text_width(edge.label, 12, bold=True) // 2 + 2
            boxes.append((edge.label_x - half, edge.label_y - 11, edge.label_x + half, edge.label_y + 3))
    return boxes


def overlap(one: Box, other: Box) -> bool:
    return one[0] < other[2] and other[0] < one[2] and one[1] < other[3] and other[1] < one[3]


def assert_apart(boxes: list[Box], others: list[Box] | None = None) -> None:
    pairs = (
        [(one, other) for index, one in enumerate(boxes) for other in boxes[index + 1 :]]
        if others is None
        else [(one, other) for one in boxes for other in others]
    )
    clashes = [(one, other) for one, other in pairs if overlap(one, other)]
    assert clashes == []


def on_border(point: tuple[int, int], box: Box) -> bool:
    x, y = point
    left, top, right, bottom = box
    return (left <= x <= right and y in (top, bottom)) or (top <= y <= bottom and x in (left, right))


def path_ends(d: str) -> tuple[tuple[int, int], tuple[int, int]]:
    numbers = [int(number) for number in re.findall(r"-?\d+", d)]
    return (numbers[0], numbers[1]), (numbers[-2], numbers[-1])


def assert_edges_touch_boxes(diagram: Diagram) -> None:
    """Every edge's path starts and ends on the border of a step, a join bar or a stop marker, and the path
    string ends where its recorded points say."""
    boxes = node_boxes(diagram) + join_boxes(diagram)
    for edge in diagram.edges:
        start, end = path_ends(edge.d)
        assert (start, end) == (edge.points[0], edge.points[-1]), edge
        for point in (start, end):
            touches_stop = any(point == (stop.x, stop.y - stop.r) for stop in diagram.stops)
            assert touches_stop or any(on_border(point, box) for box in boxes), (edge, point)


def assert_no_edge_crosses_a_step(diagram: Diagram) -> None:
    """The block layout's edges are orthogonal polylines that only run through gaps and lane columns."""
    boxes = node_boxes(diagram)
    for edge in diagram.edges:
        for (ax, ay), (bx, by) in zip(edge.points, edge.points[1:], strict=False):
            assert ax == bx or ay == by, edge
            segment = (min(ax, bx), min(ay, by), max(ax, bx), max(ay, by))
            for left, top, right, bottom in boxes:
                inside = (left + 1, top + 1, right - 1, bottom - 1)
                hit = segment[0] <= inside[2] and inside[0] <= segment[2]
                hit = hit and segment[1] <= inside[3] and inside[1] <= segment[3]
                assert not hit, (edge, (left, top, right, bottom))


def assert_inside_canvas(diagram: Diagram) -> None:
    for left, top, right, bottom in node_boxes(diagram) + join_boxes(diagram) + label_boxes(diagram):
        assert left >= 0 and top >= 0 and right <= diagram.width and bottom <= diagram.height
    for node in diagram.nodes:
        assert node.y >= 9  # room for the state badge that hangs over the top border


def assert_well_drawn(diagram: Diagram, keys: list[str]) -> None:
    assert sorted(node.key for node in diagram.nodes) == sorted(keys)
    assert_apart(node_boxes(diagram))
    assert_apart(join_boxes(diagram), node_boxes(diagram))
    assert_edges_touch_boxes(diagram)
    assert_inside_canvas(diagram)


def assert_block_layout_is_clean(diagram: Diagram, graph: dict[str, Any]) -> None:
    """Beyond the basics: labels clear of steps and of each other, edges clear of steps, every step reached,
    and every step-to-step edge drawn is one of the graph's."""
    assert diagram.layout == "blocks"
    assert_apart(label_boxes(diagram), node_boxes(diagram))
    assert_apart(label_boxes(diagram))
    assert_no_edge_crosses_a_step(diagram)
    resolved = {(source, target) for source, target, _ in b._resolved_edges(graph)}
    drawn = {(edge.source, edge.target) for edge in diagram.edges if edge.source and edge.target}
    assert drawn <= resolved
    entered = {edge.target for edge in diagram.edges}
    assert [node.key for node in diagram.nodes if node.key not in entered] == [graph["steps"][0]["key"]]


# --- the block layout --------------------------------------------------------------------------------------


def test_the_demo_is_a_column_of_two_steps():
    diagram = diagram_for_graph(CLAIMS_TRIAGE_GRAPH)
    assert diagram.layout == "blocks"
    assert [(node.key, node.title, node.subtitle) for node in diagram.nodes] == [
        ("extract", "Extract claim fields", "Generate text"),
        ("decide", "Decide the route", "Transform data"),
    ]
    assert [(edge.kind, edge.source, edge.target) for edge in diagram.edges] == [("next", "extract", "decide")]
    assert diagram.nodes[0].x == diagram.nodes[1].x
    assert_well_drawn(diagram, ["extract", "decide"])
    assert_block_layout_is_clean(diagram, CLAIMS_TRIAGE_GRAPH)
    assert diagram.summary == "2 steps: Extract claim fields, then Decide the route."


def test_nested_decisions_lanes_and_error_paths():
    graph = nested_graph()
    diagram = diagram_for_graph(graph)
    assert_well_drawn(diagram, [s["key"] for s in graph["steps"]])
    assert_block_layout_is_clean(diagram, graph)
    nodes = {node.key: node for node in diagram.nodes}
    # Lanes sit side by side under their step, in order, and below it.
    assert nodes["review"].x < nodes["auto"].x
    assert nodes["review"].y == nodes["auto"].y > nodes["check"].y
    assert nodes["mail"].x < nodes["each"].x
    # An error path is a side lane to the right, entered by a dashed "on error" edge from the step's side.
    assert nodes["tell_ops"].x > nodes["pay"].x + nodes["pay"].w
    error_edges = [edge for edge in diagram.edges if edge.kind == "error"]
    assert {(edge.source, edge.target, edge.label) for edge in error_edges} == {
        ("pay", "tell_ops", "on error"),
        ("archive", "", "on error"),  # "ignore failures": an empty lane straight to the join
    }
    assert error_edges[0].points[0] == (nodes["pay"].x + nodes["pay"].w, nodes["pay"].y + nodes["pay"].h // 2)
    assert len(diagram.stops) == 1  # the error path of "pay" stops
    branch_labels = [edge.label for edge in diagram.edges if edge.kind == "branch"]
    assert branch_labels == ["true", "approved", "rejected", "false", "lane 1", "lane 2"]
    # The empty "rejected" lane still gets its labelled path, to the approval's join.
    rejected = next(edge for edge in diagram.edges if edge.label == "rejected")
    assert rejected.target == "" and any(on_border(rejected.points[-1], box) for box in join_boxes(diagram))
    assert [join.wait for join in diagram.joins] == ["", "", "any", ""]
    kinds = {node.key: node.kind for node in diagram.nodes}
    assert (kinds["check"], kinds["review"], kinds["fan"], kinds["each"], kinds["archive"], kinds["pay"]) == (
        "branch",
        "branch",
        "parallel",
        "foreach",
        "subworkflow",
        "step",
    )
    assert nodes["each"].subtitle == "runs policy-update for each item"
    assert nodes["archive"].subtitle == "runs claims-archive"
    assert nodes["extract"].category == "ai" and nodes["review"].category == "people"


def test_the_summary_reads_the_structure():
    summary = diagram_for_graph(nested_graph()).summary
    assert summary.startswith("11 steps: Extract claim fields, then a decision “Amount over 1000?” with 2 branches")
    assert "“true”: an approval “Ask an adjuster” with 2 branches" in summary
    assert "“false”: auto" in summary
    assert "“Tell everyone” running 2 lanes at once (lane 1: Email the claimant; lane 2: Update policies" in summary
    assert "waiting for the first to finish" in summary
    assert "Archive, which runs claims-archive (a failure is ignored), then done." in summary


@pytest.mark.parametrize("seed", range(50))
def test_random_trees_are_drawn_without_overlaps(seed):
    tree = random_tree(seed)
    graph = b.graph_from_tree(tree)
    keys = [s["key"] for s in graph["steps"]]
    direct = diagram_for_tree(tree)
    assert_well_drawn(direct, keys)
    assert_block_layout_is_clean(direct, graph)
    # Through the graph (as pages do): the decompiled tree, or the graph fallback for an ambiguous one.
    drawn = diagram_for_graph(graph)
    assert_well_drawn(drawn, keys)


def test_deep_nesting_stays_apart():
    blocks = [Block(transform("leaf"))]
    for depth in range(15):
        blocks = [
            Block(check(f"if{depth}"), lanes=[Lane("true", blocks), Lane("false", [Block(transform(f"f{depth}"))])]),
            Block(transform(f"after{depth}")),
        ]
    tree = Tree(blocks=blocks)
    graph = b.graph_from_tree(tree)
    diagram = diagram_for_graph(graph)
    assert_well_drawn(diagram, [s["key"] for s in graph["steps"]])
    assert_block_layout_is_clean(diagram, graph)


def test_the_same_graph_gives_the_same_diagram():
    graph = nested_graph()
    first = diagram_for_graph(graph)
    assert diagram_for_graph(copy.deepcopy(graph)) == first
    assert diagram_for_tree(b.tree_from_graph(graph)) == first
    assert diagram_for_graph(not_block_structured()) == diagram_for_graph(not_block_structured())


def test_a_long_sequence_grows_linearly():
    small, large = diagram_for_graph(sequence(100)), diagram_for_graph(sequence(200))
    assert len(large.nodes) == 200 and len(large.edges) == 199
    assert large.width == small.width
    # Every step adds one box and one gap: the height grows by exactly the hundred steps added.
    step_height = (large.height - small.height) // 100
    assert large.height - small.height == 100 * step_height and step_height == 56 + 40
    path_text = sum(len(edge.d) for edge in large.edges)
    assert path_text <= 2.2 * sum(len(edge.d) for edge in small.edges)
    assert_well_drawn(large, [f"s{index}" for index in range(200)])


def test_long_names_are_cut_with_an_ellipsis_and_kept_whole_for_the_title():
    name = "Ask the most senior adjuster on duty to review this claim in detail"
    diagram = diagram_for_graph({"steps": [step("a", "data.transform", name)]})
    node = diagram.nodes[0]
    assert node.title == name
    assert node.title_text.endswith("…") and name.startswith(node.title_text[:-1])
    assert text_width(node.title_text, 13, bold=True) <= node.w - 30
    assert fit_text("short", 100, 13) == "short"
    assert diagram.nodes[0].type_name == "Transform data"


def test_unknown_step_types_are_drawn_as_unknown():
    diagram = diagram_for_graph({"steps": [{"key": "x", "type": "nope.nothing"}, {"key": "y"}]})
    assert [(node.category, node.subtitle) for node in diagram.nodes] == [
        ("unknown", "Unknown type nope.nothing"),
        ("unknown", "No type"),
    ]


# --- the graph fallback ------------------------------------------------------------------------------------


def test_a_graph_that_is_not_block_structured_is_drawn_in_layers():
    graph = not_block_structured()
    with pytest.raises(b.NotBlockStructured):
        b.tree_from_graph(graph)
    diagram = diagram_for_graph(graph)
    assert diagram.layout == "graph"
    assert_well_drawn(diagram, ["a", "z", "b", "c", "d", "e"])
    y = {node.key: node.y for node in diagram.nodes}
    assert y["a"] == y["z"] < y["b"] < y["c"] == y["d"] < y["e"]  # longest-path layers
    assert len(diagram.edges) == 7
    assert {edge.kind for edge in diagram.edges} == {"next", "branch", "error"}
    assert "drawn as a graph" in diagram.summary and "7 connections" in diagram.summary


@pytest.mark.parametrize(
    "graph",
    [
        {"steps": [transform("a"), transform("b")], "edges": [{"from": "a", "to": "b"}, {"from": "b", "to": "a"}]},
        {"steps": [transform("a")], "edges": [{"from": "a", "to": "a"}]},
        {
            "steps": [transform("a"), transform("b"), transform("c")],
            "edges": [{"from": "a", "to": "b"}, {"from": "b", "to": "c"}, {"from": "c", "to": "b", "when": "error"}],
        },
    ],
    ids=["two-step-cycle", "self-loop", "error-loop"],
)
def test_cycles_are_drawn_with_loops_around_the_steps(graph):
    diagram = diagram_for_graph(graph)
    assert diagram.layout == "graph"
    assert_well_drawn(diagram, [s["key"] for s in graph["steps"]])
    loops = [edge for edge in diagram.edges if "back" in edge.label]
    assert len(loops) == 1
    assert_no_edge_crosses_a_step(Diagram(diagram.width, diagram.height, diagram.nodes, loops))
    assert "back to an earlier step" in diagram.summary


@pytest.mark.parametrize("seed", range(30))
def test_random_arbitrary_graphs_are_drawn_without_overlaps(seed):
    rng = random.Random(seed)
    keys = [f"n{index}" for index in range(rng.randint(2, 14))]
    edges = [
        {"from": rng.choice(keys), "to": rng.choice(keys), "when": rng.choice(["success", "error", "true"])}
        for _ in range(rng.randint(1, 2 * len(keys)))
    ]
    graph = {"steps": [transform(key) for key in keys], "edges": edges}
    diagram = diagram_for_graph(graph)
    assert_well_drawn(diagram, keys)
    loops = [edge for edge in diagram.edges if "back" in edge.label]
    assert_no_edge_crosses_a_step(Diagram(diagram.width, diagram.height, diagram.nodes, loops))


GARBAGE = [
    None,
    5,
    "steps",
    [],
    {},
    {"steps": None},
    {"steps": "abc"},
    {"steps": [None, 1, "a", {"key": 3}, {"name": "no key"}]},
    {"steps": [transform("a"), transform("a")]},
    {"steps": [transform("a"), {"key": "b", "type": ["list"], "name": {"x": 1}}], "edges": "nope"},
    {"steps": [transform("a"), transform("b")], "edges": [None, {"from": "a"}, {"from": "a", "to": ["b"]}]},
    {"steps": [transform("a"), transform("b")], "edges": [{"from": "a", "to": "b", "when": ["x"]}]},
    {"steps": [transform("a"), transform("b")], "edges": [{"from": "a", "to": "missing"}]},
    {"steps": [check("a"), transform("b")], "edges": [{"from": "a", "to": "b", "when": "maybe"}]},
]


@pytest.mark.parametrize("graph", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_does_not_crash(graph):
    diagram = diagram_for_graph(graph)
    assert diagram.summary
    assert_apart(node_boxes(diagram))
    assert_edges_touch_boxes(diagram)
    assert isinstance(diagram_outline(graph), list)
    render(diagram)


def test_an_unreadable_graph_says_it_could_not_be_drawn():
    for graph in (None, {"steps": "abc"}, {"steps": [None, {"key": 3}]}):
        diagram = diagram_for_graph(graph)
        assert (diagram.layout, diagram.nodes, diagram.edges) == ("empty", [], [])
        assert diagram.summary.startswith("This workflow's graph could not be drawn")
        assert diagram_outline(graph) == []
    partly = diagram_for_graph({"steps": [transform("a"), None], "edges": [{"from": "a", "to": "nowhere"}]})
    assert [node.key for node in partly.nodes] == ["a"]
    assert "Left out because they cannot be read: 1 step and 1 connection." in partly.summary
    assert diagram_for_graph({"steps": []}).summary == "This workflow has no steps yet."


# --- the outline -------------------------------------------------------------------------------------------


def test_the_outline_follows_the_blocks():
    outline = diagram_outline(nested_graph())
    rows = [(item["depth"], item["key"], item["lane_label"]) for item in outline]
    assert rows == [
        (0, "extract", ""),
        (0, "check", ""),
        (1, "review", 'If "true"'),
        (2, "pay", 'Human approval "approved"'),
        (3, "tell_ops", "On error, then stop"),
        (2, "", 'Human approval "rejected"'),
        (1, "auto", 'If "false"'),
        (0, "fan", ""),
        (1, "mail", "Lane 1"),
        (1, "each", "Lane 2"),
        (0, "archive", ""),
        (1, "", "On error"),
        (0, "done", ""),
    ]
    assert outline[0] == {
        "depth": 0,
        "key": "extract",
        "title": "Extract claim fields",
        "type_name": "Extract data",
        "lane_label": "",
    }
    assert outline[5]["title"] == "No steps"


def test_the_outline_of_a_graph_lists_every_step_by_layer():
    outline = diagram_outline(not_block_structured())
    assert [item["key"] for item in outline] == ["a", "z", "b", "c", "d", "e"]
    assert {item["depth"] for item in outline} == {0}


# --- the template ------------------------------------------------------------------------------------------


def render(diagram: Diagram, **context: Any) -> str:
    return render_to_string("workflows/_diagram.html", {"diagram": diagram, **context})


def test_the_template_is_an_accessible_svg_without_inline_style():
    html = render(diagram_for_graph(nested_graph()), diagram_id="claims", title="Claims triage")
    assert re.search(r"\sstyle\s*=", html) is None
    assert '<svg class="diagram-svg"' in html and 'role="img"' in html
    assert 'aria-labelledby="claims-title claims-desc"' in html
    assert '<title id="claims-title">Claims triage</title>' in html
    assert '<desc id="claims-desc">11 steps: Extract claim fields, then a decision' in html
    assert '<marker id="claims-arrow"' in html and 'marker-end="url(#claims-arrow-error)"' in html
    assert html.count('<g class="diagram-node ') == 11
    assert 'class="diagram-node diagram-node--ai diagram-kind--step" data-step="extract"' in html
    assert html.count('class="diagram-edge diagram-edge--error"') == 2
    assert ">on error</text>" in html and ">approved</text>" in html
    assert '<figure class="diagram diagram--blocks" id="claims">' in html and "<figcaption>" in html
    assert 'class="diagram-scroll" tabindex="0"' in html


def test_run_states_are_classes_and_badges_in_words():
    states = {
        "extract": "succeeded",
        "check": "running",
        "review": "waiting",
        "pay": "failed",
        "auto": "skipped",
        "mail": "pending",
        "each": 'evil" onmouseover="x',
    }
    html = render(diagram_for_graph(nested_graph()), states=states)
    for state in ("succeeded", "running", "waiting", "failed", "skipped", "pending"):
        assert f' state-{state}"' in html
    for badge in ("✓ done", "… running", "‖ waiting", "✗ failed", "– skipped"):
        assert f">{badge}</text>" in html
    assert html.count('class="diagram-badge ') == 5  # pending looks like no run at all: no badge
    assert "Extract claim fields — Extract data (step extract) — done</title>" in html
    assert "evil" not in html and "onmouseover" not in html
    assert "Run: 1 not started, 1 running, 1 waiting, 1 done, 1 failed, 1 skipped.</desc>" in html
    assert "state-" not in render(diagram_for_graph(nested_graph()))


def test_text_is_escaped():
    graph = {"steps": [step("x", "data.transform", "<script>alert(1)</script>"), transform("y")]}
    html = render(diagram_for_graph(graph))
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_numbers_are_not_localised(settings):
    settings.USE_THOUSAND_SEPARATOR = True
    html = render(diagram_for_graph(sequence(30)))
    height = diagram_for_graph(sequence(30)).height
    assert height >= 1000 and f'height="{height}"' in html


def test_an_empty_or_unreadable_diagram_renders_its_message():
    html = render(diagram_for_graph({"steps": 3}))
    assert "<svg" not in html
    assert "This workflow&#x27;s graph could not be drawn: it has no list of steps." in html


def test_the_graph_fallback_renders():
    html = render(diagram_for_graph(not_block_structured()))
    assert '<figure class="diagram diagram--graph"' in html
    assert "drawn as a graph" in html and html.count("diagram-node ") == 6
