"""The builder's block tree: graphs it recognises, graphs it refuses, and every edit compiling back to a
graph the engine runs and the decompiler reads as the same tree."""

from __future__ import annotations

import copy
import random
import re

import pytest

from apps.workflows import blocks as b
from apps.workflows.blocks import Block, BlockEditError, Lane, NotBlockStructured, Tree
from apps.workflows.demo import CLAIMS_TRIAGE_GRAPH
from apps.workflows.graph import graph_errors


def transform(key, **fields):
    return {"key": key, "type": "data.transform", "config": {"fields": fields or {"x": "1"}}}


def check(key, condition="input.n > 10.0"):
    return {"key": key, "type": "logic.if", "config": {"condition": condition}}


def dump(blocks):
    """A tree as plain data, to compare two trees."""
    return [
        (
            block.key,
            None if block.lanes is None else [(lane.label, dump(lane.blocks)) for lane in block.lanes],
            None if block.on_error is None else (block.error_continues, dump(block.on_error)),
            block.wait,
        )
        for block in blocks
    ]


def roundtrip(graph):
    tree = b.tree_from_graph(graph)
    again = b.graph_from_tree(tree)
    assert b.tree_from_graph(again) is not None
    return tree, again


def test_a_sequential_graph_without_edges_compiles_to_itself():
    tree, again = roundtrip(CLAIMS_TRIAGE_GRAPH)
    assert [block.key for block in tree.blocks] == ["extract", "decide"]
    assert again == CLAIMS_TRIAGE_GRAPH


def test_if_branches_merge_into_the_next_step():
    graph = {
        "steps": [check("check"), transform("big"), transform("small"), transform("done")],
        "edges": [
            {"from": "check", "to": "big", "when": "true"},
            {"from": "check", "to": "small", "when": "false"},
            {"from": "big", "to": "done"},
            {"from": "small", "to": "done"},
        ],
    }
    tree, again = roundtrip(graph)
    assert dump(tree.blocks) == [
        ("check", [("true", [("big", None, None, "all")]), ("false", [("small", None, None, "all")])], None, "all"),
        ("done", None, None, "all"),
    ]
    assert again == graph


def test_an_empty_branch_goes_straight_to_the_merge_and_a_branch_may_end_the_path():
    graph = {
        "steps": [check("check"), transform("big"), transform("done")],
        "edges": [
            {"from": "check", "to": "big", "when": "true"},
            {"from": "check", "to": "done", "when": "false"},
            {"from": "big", "to": "done"},
        ],
    }
    tree, _ = roundtrip(graph)
    assert dump(tree.blocks)[0][1] == [("true", [("big", None, None, "all")]), ("false", [])]
    # At the end of the workflow an empty branch has no edge at all.
    ending = {"steps": [check("check"), transform("big")], "edges": [{"from": "check", "to": "big", "when": "true"}]}
    tree, again = roundtrip(ending)
    assert dump(tree.blocks)[0][1] == [("true", [("big", None, None, "all")]), ("false", [])]
    assert again == ending


def test_parallel_lanes_join_with_an_explicit_join_on_the_merge():
    graph = {
        "steps": [
            {"key": "fan", "type": "flow.parallel", "config": {}},
            transform("left"),
            transform("right"),
            transform("join"),
        ],
        "edges": [
            {"from": "fan", "to": "left"},
            {"from": "fan", "to": "right"},
            {"from": "left", "to": "join"},
            {"from": "right", "to": "join"},
        ],
    }
    tree, again = roundtrip(graph)
    assert [len(lane.blocks) for lane in tree.blocks[0].lanes] == [1, 1]
    assert again["steps"][3]["join"] == "all"  # the merge is marked, so one lane alone still reads back
    one_lane = copy.deepcopy(tree)
    b.block_delete(one_lane, key="right")
    compiled = b.graph_from_tree(one_lane)
    assert dump(b.tree_from_graph(compiled).blocks) == dump(one_lane.blocks)
    assert dump(one_lane.blocks)[0][1] == [("", [("left", None, None, "all")])]


def test_error_paths_that_continue_and_that_stop():
    stop = {
        "steps": [transform("risky"), transform("ok"), transform("recover")],
        "edges": [{"from": "risky", "to": "ok"}, {"from": "risky", "to": "recover", "when": "error"}],
    }
    tree, again = roundtrip(stop)
    assert dump(tree.blocks) == [
        ("risky", None, (False, [("recover", None, None, "all")]), "all"),
        ("ok", None, None, "all"),
    ]
    assert b.block_error_mode(tree.blocks[0]) == "stop"
    assert sorted(map(str, again["edges"])) == sorted(map(str, stop["edges"]))
    b.block_error_mode_set(tree, key="risky", mode="continue")
    edges = b.graph_from_tree(tree)["edges"]
    assert {"from": "recover", "to": "ok"} in edges
    ignore = {"steps": [transform("risky"), transform("ok")], "edges": [{"from": "risky", "to": "ok"}]}
    tree = b.tree_from_graph(ignore)
    b.block_error_mode_set(tree, key="risky", mode="ignore")
    compiled = b.graph_from_tree(tree)
    assert {"from": "risky", "to": "ok", "when": "error"} in compiled["edges"]
    assert b.block_error_mode(b.tree_from_graph(compiled).blocks[0]) == "ignore"


def test_an_error_path_that_stops_inside_a_branch_does_not_hide_the_branch_merge():
    tree = Tree(
        blocks=[
            Block(
                step=check("check"),
                lanes=[
                    Lane(
                        "true",
                        [Block(step=transform("risky"), on_error=[Block(transform("r"))], error_continues=False)],
                    ),
                    Lane("false", [Block(step=transform("other"))]),
                ],
            ),
            Block(step=transform("after")),
        ]
    )
    compiled = b.graph_from_tree(tree)
    assert dump(b.tree_from_graph(compiled).blocks) == dump(tree.blocks)


@pytest.mark.parametrize(
    "graph, reason",
    [
        (
            {
                "steps": [transform("a"), transform("b"), transform("c")],
                "edges": [{"from": "a", "to": "b"}, {"from": "a", "to": "c"}],
            },
            "several steps at once",
        ),
        ({"steps": [transform("a"), transform("b")], "edges": []}, "starts at several steps"),
        (
            {"steps": [transform("a"), transform("b")], "edges": [{"from": "a", "to": "b"}, {"from": "b", "to": "a"}]},
            "cycle",
        ),
        (
            {
                "steps": [check("c"), transform("x"), transform("y"), transform("z")],
                "edges": [
                    {"from": "c", "to": "x", "when": "true"},
                    {"from": "c", "to": "y", "when": "false"},
                    {"from": "x", "to": "z"},
                    {"from": "x", "to": "y"},
                ],
            },
            "several steps at once",
        ),
        ({"steps": [check("c"), transform("x")], "edges": [{"from": "c", "to": "x", "when": "maybe"}]}, "maybe"),
        ({"steps": "nope"}, "not a list"),
    ],
)
def test_graphs_that_are_not_blocks_are_refused_with_a_reason(graph, reason):
    with pytest.raises(NotBlockStructured, match=reason):
        b.tree_from_graph(graph)


# --- every tree the editor can make reads back as itself ------------------------------------------------------

LEAF_TYPES = ["data.transform", "util.delay", "http.request"]


def _random_blocks(rng: random.Random, keys: list[str], depth: int, length: int) -> list[Block]:
    result = []
    for _ in range(length):
        key = f"s{len(keys)}"
        keys.append(key)
        roll = rng.random()
        if depth > 0 and roll < 0.18:
            block = Block(step=check(key))
            block.lanes = [
                Lane(label, _random_blocks(rng, keys, depth - 1, rng.randint(0, 2))) for label in ("true", "false")
            ]
        elif depth > 0 and roll < 0.3:
            block = Block(step={"key": key, "type": "flow.parallel", "config": {}}, lanes=[])
            block.lanes = [
                Lane("", _random_blocks(rng, keys, depth - 1, rng.randint(1, 2))) for _ in range(rng.randint(0, 3))
            ]
            block.wait = rng.choice(["all", "any"])
        elif depth > 0 and roll < 0.38:
            block = Block(step={"key": key, "type": "human.approval", "config": {"queue": "claims"}})
            block.lanes = [
                Lane(label, _random_blocks(rng, keys, depth - 1, rng.randint(0, 2)))
                for label in ("approved", "rejected")
            ]
            if not any(lane.blocks for lane in block.lanes):
                block.lanes = None
        else:
            block = Block(step={"key": key, "type": rng.choice(LEAF_TYPES), "config": {}})
        if depth > 0 and rng.random() < 0.15:
            block.on_error = _random_blocks(rng, keys, depth - 1, rng.randint(1, 2))
            block.error_continues = rng.random() < 0.5
        result.append(block)
    return result


# Trees whose compiled graph reads back differently: a parallel nested at the end of another parallel's lane
# whose step after it also follows the outer one, where the join mark cannot say which parallel it belongs to.
# The editor checks every edit by reading the graph back and refuses one that does not (the draft is unchanged).
AMBIGUOUS_SEEDS = {61}


@pytest.mark.parametrize(
    "seed",
    [
        pytest.param(seed, marks=pytest.mark.xfail(strict=True, raises=NotBlockStructured))
        if seed in AMBIGUOUS_SEEDS
        else seed
        for seed in range(300)
    ],
)
def test_random_trees_compile_to_valid_graphs_that_read_back_as_the_same_graph(seed, db):
    # The approval step's check asks the database whether its queue exists (a config problem here).
    rng = random.Random(seed)
    tree = Tree(blocks=_random_blocks(rng, [], depth=3, length=rng.randint(1, 5)))
    graph = b.graph_from_tree(tree)
    structural = [problem for problem in graph_errors(graph) if not CONFIG_PROBLEM.search(problem)]
    assert structural == []
    read = b.tree_from_graph(graph)
    again = b.graph_from_tree(read)
    # The same engine graph (steps, edges, joins); step and edge order may be normalised once, then stays.
    assert b._normal_graph(again) == b._normal_graph(graph)
    assert b.graph_from_tree(b.tree_from_graph(again)) == again


CONFIG_PROBLEM = re.compile(r"config|fields|seconds|url|queue|condition")


# --- edits ---------------------------------------------------------------------------------------------------


def claims_tree() -> Tree:
    tree = Tree(blocks=[])
    b.block_insert(tree, lane="root", index=0, step={"key": "extract", "type": "llm.extract", "config": {}})
    b.block_insert(tree, lane="root", index=1, step=check("check", "steps.extract.data.amount > 1000.0"))
    b.block_insert(tree, lane="check/branch/true", index=0, step={"key": "approval", "type": "human.approval"})
    b.block_insert(tree, lane="check/branch/false", index=0, step=transform("book", amount="steps.extract.data.amount"))
    b.block_insert(tree, lane="root", index=9, step=transform("done"))
    return tree


def test_inserting_into_branches_and_at_the_end():
    tree = claims_tree()
    assert [block.key for block, _ in b.walk(tree.blocks)] == ["extract", "check", "approval", "book", "done"]
    graph = b.graph_from_tree(tree)
    assert {"from": "approval", "to": "done"} in graph["edges"]
    assert {"from": "check", "to": "book", "when": "false"} in graph["edges"]
    with pytest.raises(BlockEditError, match="exists already"):
        b.block_insert(tree, lane="root", index=0, step=transform("done"))
    with pytest.raises(BlockEditError, match="no place"):
        b.block_insert(tree, lane="check/lane/0", index=0, step=transform("nowhere"))


def test_moving_up_out_of_a_lane_and_down_into_place():
    tree = claims_tree()
    b.block_move(tree, key="approval", direction="up")  # first in its lane: steps out, before the if
    assert [block.key for block in tree.blocks] == ["extract", "approval", "check", "done"]
    assert tree.blocks[2].lanes[0].blocks == []
    b.block_move_to(tree, key="approval", lane="check/branch/true")
    assert [block.key for block in tree.blocks[1].lanes[0].blocks] == ["approval"]
    b.block_move(tree, key="book", direction="down")  # last in its lane: steps out, after the if
    assert [block.key for block in tree.blocks] == ["extract", "check", "book", "done"]
    with pytest.raises(BlockEditError, match="already the first"):
        b.block_move(tree, key="extract", direction="up")
    with pytest.raises(BlockEditError, match="own branches"):
        b.block_move_to(tree, key="check", lane="check/branch/true")


def test_an_approval_grows_branches_when_a_step_goes_into_one_and_loses_them_when_empty():
    tree = claims_tree()
    b.block_insert(tree, lane="approval/branch/rejected", index=0, step=transform("notify"))
    approval, _ = b.find(tree, "approval")
    assert [lane.label for lane in approval.lanes] == ["approved", "rejected"]
    b.block_delete(tree, key="notify")
    assert approval.lanes is None


def test_duplicate_gives_fresh_keys_and_follows_references_inside_the_copy():
    tree = claims_tree()
    copied = b.block_duplicate(tree, key="check")
    assert copied.key == "check_2"
    assert [block.key for block in tree.blocks] == ["extract", "check", "check_2", "done"]
    inner = [block.key for block, _ in b.walk([copied])]
    assert inner == ["check_2", "approval_2", "book_2"]
    assert copied.step["config"]["condition"] == "steps.extract.data.amount > 1000.0"  # outside the copy: kept
    b.graph_from_tree(tree)


def test_rekey_rewrites_every_reference():
    tree = claims_tree()
    b.block_rekey(tree, key="extract", new_key="claim")
    graph = b.graph_from_tree(tree)
    assert "steps.claim.data.amount" in str(graph)
    assert "steps.extract" not in str(graph)
    with pytest.raises(BlockEditError, match="letters"):
        b.block_rekey(tree, key="claim", new_key="2bad")


def test_deleting_the_last_error_step_removes_the_error_path():
    tree = claims_tree()
    b.block_insert(tree, lane="extract/error", index=0, step=transform("fallback"))
    extract, _ = b.find(tree, "extract")
    assert b.block_error_mode(extract) == "continue"
    with pytest.raises(BlockEditError, match="still has steps"):
        b.block_error_mode_set(tree, key="extract", mode="fail")
    b.block_delete(tree, key="fallback")
    assert extract.on_error is None


def test_a_switch_cannot_drop_a_branch_that_has_steps():
    tree = Tree(blocks=[])
    switch = {"key": "route", "type": "logic.switch", "config": {"cases": [{"label": "gold", "condition": "true"}]}}
    b.block_insert(tree, lane="root", index=0, step=switch)
    b.block_insert(tree, lane="route/branch/gold", index=0, step=transform("vip"))
    renamed = copy.deepcopy(switch)
    renamed["config"]["cases"][0]["label"] = "platinum"
    with pytest.raises(BlockEditError, match='"gold" branch still has steps'):
        b.block_step_replace(tree, key="route", step=renamed)
    more = copy.deepcopy(switch)
    more["config"]["cases"].append({"label": "silver", "condition": "false"})
    b.block_step_replace(tree, key="route", step=more)
    route, _ = b.find(tree, "route")
    assert [lane.label for lane in route.lanes] == ["gold", "silver", "default"]
    assert [block.key for block in route.lanes[0].blocks] == ["vip"]


def test_keys_are_readable_and_unique():
    assert b.key_new(set(), "llm.extract") == "extract"
    assert b.key_new({"extract", "extract_2"}, "llm.extract") == "extract_3"
    assert b.key_new(set(), "logic.if") == "check"  # "if" is reserved in CEL
