"""The semantic diff between two workflow versions (apps/workflows/diff.py): pure Python, no database."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from apps.workflows.demo import CLAIMS_TRIAGE_GRAPH, CLAIMS_TRIAGE_INPUT_SCHEMA
from apps.workflows.diff import EdgeChange, FieldChange, StepChange, diff_text, version_diff


def demo() -> tuple[dict[str, Any], dict[str, Any]]:
    """A private copy of the demo version (graph, input schema) to change."""
    return copy.deepcopy(CLAIMS_TRIAGE_GRAPH), copy.deepcopy(CLAIMS_TRIAGE_INPUT_SCHEMA)


def diff_from_demo(graph: Any, input_schema: Any = CLAIMS_TRIAGE_INPUT_SCHEMA) -> Any:
    return version_diff(CLAIMS_TRIAGE_GRAPH, CLAIMS_TRIAGE_INPUT_SCHEMA, graph, input_schema)


def step(key: str, step_type: str = "data.transform", **options: Any) -> dict[str, Any]:
    return {"key": key, "type": step_type, "config": {}, **options}


def with_branch() -> dict[str, Any]:
    """The demo with a `check` step between extract and decide: decide on "false", a new approve on "true"."""
    graph, _ = demo()
    extract, decide = graph["steps"]
    graph["steps"] = [
        extract,
        step("check", "logic.if", name="Check amount", config={"condition": "steps.extract.data.amount > 1000"}),
        decide,
        step("approve", "human.approval", name="Human approval"),
    ]
    graph["edges"] = [
        {"from": "extract", "to": "check"},
        {"from": "check", "to": "decide", "when": "false"},
        {"from": "check", "to": "approve", "when": "true"},
    ]
    return graph


def test_identical_versions_are_empty() -> None:
    graph, schema = demo()

    diff = diff_from_demo(graph, schema)

    assert diff.is_empty
    assert diff.summary() == "No changes"
    assert diff_text(diff) == "No changes"


def test_defaults_equal_missing_keys() -> None:
    graph, _ = demo()
    graph["steps"][1].update(inputs={}, join="all")
    del graph["steps"][0]["name"]
    before, _ = demo()
    before["steps"][0]["name"] = ""

    assert version_diff(before, {}, graph, {}).is_empty


def test_implicit_edges_equal_explicit_sequential_edges() -> None:
    graph, _ = demo()
    graph["edges"] = [{"from": "extract", "to": "decide"}]
    explicit_when, _ = demo()
    explicit_when["edges"] = [{"from": "extract", "to": "decide", "when": "success"}]

    assert diff_from_demo(graph).is_empty
    assert diff_from_demo(explicit_when).is_empty
    assert version_diff(graph, {}, CLAIMS_TRIAGE_GRAPH, {}).is_empty


def test_explicit_edges_that_differ_from_the_implicit_ones_move_a_step() -> None:
    graph, _ = demo()
    graph["edges"] = []  # both steps now start the run

    diff = diff_from_demo(graph)

    assert diff.steps == (
        StepChange(
            key="decide",
            kind="moved",
            type="data.transform",
            name="Decide the route",
            moved=True,
            fields=(),
            before_position='after "extract"',
            after_position="first",
        ),
    )
    assert diff.edges == (EdgeChange("extract", "decide", "success", "removed"),)


def test_added_step() -> None:
    graph, _ = demo()
    graph["steps"].append(step("notify", "http.request", name="Notify"))

    diff = diff_from_demo(graph)

    (added,) = diff.steps
    assert added == StepChange(
        key="notify",
        kind="added",
        type="http.request",
        name="Notify",
        moved=False,
        fields=(),
        before_position=None,
        after_position='after "decide"',
    )
    assert diff.edges == (EdgeChange("decide", "notify", "success", "added"),)
    assert diff.summary() == "1 step added"


def test_removed_step_moves_its_successor() -> None:
    graph, _ = demo()
    del graph["steps"][0]

    diff = diff_from_demo(graph)

    removed, moved = diff.steps
    assert (removed.key, removed.kind, removed.before_position, removed.after_position) == (
        "extract",
        "removed",
        "first",
        None,
    )
    assert removed.name == "Extract claim fields"
    assert removed.type == "llm.generate"
    assert (moved.key, moved.kind, moved.moved) == ("decide", "moved", True)
    assert (moved.before_position, moved.after_position) == ('after "extract"', "first")
    assert diff.summary() == "1 step removed, 1 moved"


def test_changed_prompt_and_nested_json_schema_field() -> None:
    graph, _ = demo()
    config = graph["steps"][0]["config"]
    config["prompt"] = "Extract the fields."
    config["json_schema"]["properties"]["amount"]["type"] = "string"
    config["json_schema"]["properties"]["currency"] = {"type": "string"}
    del config["max_new_tokens"]

    diff = diff_from_demo(graph)

    (changed,) = diff.steps
    assert (changed.key, changed.kind, changed.moved) == ("extract", "changed", False)
    assert changed.before_position == changed.after_position == "first"
    # Sorted by path.
    assert changed.fields == (
        FieldChange("config.json_schema.properties.amount.type", "number", "string", "changed"),
        FieldChange("config.json_schema.properties.currency", None, {"type": "string"}, "added"),
        FieldChange("config.max_new_tokens", 300, None, "removed"),
        FieldChange(
            "config.prompt", CLAIMS_TRIAGE_GRAPH["steps"][0]["config"]["prompt"], "Extract the fields.", "changed"
        ),
    )
    assert diff.edges == ()
    assert diff.summary() == "1 step changed"


def test_lists_are_compared_whole_and_booleans_are_not_numbers() -> None:
    graph, _ = demo()
    graph["steps"][0]["config"]["json_schema"]["required"].append("currency")
    graph["steps"][1]["retry"] = {"max_attempts": True}
    before, _ = demo()
    before["steps"][1]["retry"] = {"max_attempts": 1}

    diff = version_diff(before, {}, graph, {})

    extract, decide = diff.steps
    assert [change.path for change in extract.fields] == ["config.json_schema.required"]
    assert extract.fields[0].after[-1] == "currency"
    assert decide.fields == (FieldChange("retry.max_attempts", 1, True, "changed"),)


def test_step_moved_onto_a_branch_and_changed() -> None:
    graph = with_branch()
    graph["steps"][2]["name"] = "Route"

    diff = diff_from_demo(graph)

    assert [(change.key, change.kind, change.moved) for change in diff.steps] == [
        ("check", "added", False),
        ("decide", "changed", True),
        ("approve", "added", False),
    ]
    check, decide, approve = diff.steps
    assert check.after_position == 'after "extract"'
    assert decide.fields == (FieldChange("name", "Decide the route", "Route", "changed"),)
    assert (decide.before_position, decide.after_position) == ('after "extract"', 'on the "false" branch of "check"')
    assert approve.after_position == 'on the "true" branch of "check"'
    assert diff.edges == (
        EdgeChange("check", "approve", "true", "added"),
        EdgeChange("check", "decide", "false", "added"),
        EdgeChange("extract", "check", "success", "added"),
        EdgeChange("extract", "decide", "success", "removed"),
    )
    assert diff.summary() == "2 steps added, 1 changed, 1 moved"


def test_positions_for_error_paths_and_joins() -> None:
    graph = with_branch()
    graph["steps"].append(step("report", "http.request", join="any"))
    graph["steps"].append(step("alert", "http.request"))
    graph["edges"] += [
        {"from": "decide", "to": "report"},
        {"from": "approve", "to": "report"},
        {"from": "check", "to": "report", "when": "maybe"},
        {"from": "extract", "to": "alert", "when": "error"},
    ]

    positions = {change.key: change.after_position for change in diff_from_demo(graph).steps}

    assert positions["report"] == 'after "decide" and "approve" and on the "maybe" branch of "check"'
    assert positions["alert"] == 'on the error path of "extract"'


def test_step_order_follows_the_new_version_with_removals_in_place() -> None:
    before = {"steps": [step(key) for key in ("a", "b", "c", "d", "e")]}
    after = {"steps": [step("x"), step("a"), step("d"), step("y"), step("c")]}
    for changed in after["steps"]:
        changed["config"] = {"changed": True}

    diff = version_diff(before, {}, after, {})

    # "b" goes right after "a", its nearest predecessor in the old order that survives; "e" after "d".
    assert [(change.key, change.kind) for change in diff.steps] == [
        ("x", "added"),
        ("a", "changed"),
        ("b", "removed"),
        ("d", "changed"),
        ("e", "removed"),
        ("y", "added"),
        ("c", "changed"),
    ]


def test_removed_first_steps_come_first() -> None:
    before = {"steps": [step("a"), step("b"), step("c")]}
    after = {"steps": [step("c")]}

    diff = version_diff(before, {}, after, {})

    assert [(change.key, change.kind) for change in diff.steps] == [
        ("a", "removed"),
        ("b", "removed"),
        ("c", "moved"),
    ]


def test_input_schema_title_and_required_changes() -> None:
    _, schema = demo()
    schema["properties"]["claim_text"]["title"] = "Claim"
    schema["properties"]["policy_number"] = {"type": "string", "title": "Policy number"}
    schema["required"] = ["claim_text", "policy_number"]

    diff = diff_from_demo(CLAIMS_TRIAGE_GRAPH, schema)

    assert diff.steps == ()
    assert diff.input_fields == (
        FieldChange("claim_text.title", "Claim text", "Claim", "changed"),
        FieldChange("policy_number", None, {"type": "string", "title": "Policy number"}, "added"),
        FieldChange("required", ["claim_text"], ["claim_text", "policy_number"], "changed"),
    )
    assert diff.summary() == "3 input fields changed"


def test_budget_change_is_a_setting() -> None:
    before, _ = demo()
    before["budget"] = {"max_tokens": 1000, "max_cost": 0.5}
    after, _ = demo()
    after["budget"] = {"max_tokens": 2000, "max_cost": 0.5}
    after["timeout_seconds"] = 600

    diff = version_diff(before, CLAIMS_TRIAGE_INPUT_SCHEMA, after, CLAIMS_TRIAGE_INPUT_SCHEMA)

    assert diff.settings == (
        FieldChange("budget.max_tokens", 1000, 2000, "changed"),
        FieldChange("timeout_seconds", None, 600, "added"),
    )
    assert diff.steps == diff.edges == diff.input_fields == ()
    assert diff.summary() == "2 settings changed"


def test_summary_counts_everything() -> None:
    graph = with_branch()
    del graph["steps"][0]["name"]
    graph["budget"] = {"max_tokens": 10}
    _, schema = demo()
    schema["examples"] = []

    assert diff_from_demo(graph, schema).summary() == (
        "2 steps added, 1 changed, 1 moved; 1 input field changed; 1 setting changed"
    )


def test_diff_text_lines() -> None:
    graph = with_branch()
    graph["steps"][0]["config"]["prompt"] = "Extract the fields. " * 10
    graph["steps"][0]["config"]["max_new_tokens"] = 400
    graph["budget"] = {"max_tokens": 2000}
    before, schema = demo()
    before["steps"].append(step("notify", "http.request", name="HTTP request"))
    schema["properties"]["claim_text"]["title"] = "Claim"
    del schema["examples"]

    text = diff_text(version_diff(before, CLAIMS_TRIAGE_INPUT_SCHEMA, graph, schema))
    lines = text.splitlines()

    assert '+ step "approve" (Human approval) added on the "true" branch of "check"' in lines
    assert '+ step "check" (Check amount) added after "extract"' in lines
    assert '- step "notify" (HTTP request) removed' in lines
    assert '~ step "extract" (Extract claim fields): config.max_new_tokens changed' in lines
    assert "    before: 300" in lines
    assert "    after:  400" in lines
    prompt = lines.index('~ step "extract" (Extract claim fields): config.prompt changed')
    assert lines[prompt + 1].startswith('    before: "Extract the claimant, policy number,')
    assert lines[prompt + 1].endswith('…"')
    assert lines[prompt + 2].startswith('    after:  "Extract the fields. Extract the fields.')
    assert len(lines[prompt + 2]) <= len("    after:  ") + 80
    assert (
        '> step "decide" (Decide the route) moved: was after "extract", now on the "false" branch of "check"' in lines
    )
    assert '+ edge check → approve when "true"' in lines
    assert "+ edge extract → check" in lines
    assert "- edge extract → decide" in lines
    assert "- edge decide → notify" in lines
    assert '~ input field claim_text.title: "Claim text" → "Claim"' in lines
    assert any(line.startswith('- input field examples removed (was [{"label": ') for line in lines)
    assert '+ setting budget added: {"max_tokens": 2000}' in lines
    # Steps first (new order), then edges, inputs, settings.
    assert lines.index('~ step "extract" (Extract claim fields): config.max_new_tokens changed') < lines.index(
        '+ step "check" (Check amount) added after "extract"'
    )
    assert lines.index("- edge decide → notify") > lines.index('- step "notify" (HTTP request) removed')
    assert lines[-1] == '+ setting budget added: {"max_tokens": 2000}'


def test_diff_text_escapes_and_truncates_strings_without_splitting_escapes() -> None:
    graph, _ = demo()
    graph["steps"][1]["name"] = "line\n" * 40

    text = diff_text(diff_from_demo(graph))

    after = next(line for line in text.splitlines() if line.startswith("    after:"))
    assert after.startswith('    after:  "line\\nline\\n')
    assert after.endswith('\\nline…"')  # cut before an escape rather than through it
    assert "\n" not in after


def test_diff_text_labels_unnamed_steps_by_type_and_shows_added_and_removed_fields() -> None:
    before = {"steps": [step("a", config={"old": 1})]}
    after = {"steps": [step("a", config={"new": "x"})]}

    assert diff_text(version_diff(before, {}, after, {})).splitlines() == [
        '~ step "a" (data.transform): config.new added',
        '    after:  "x"',
        '~ step "a" (data.transform): config.old removed',
        "    before: 1",
    ]


@pytest.mark.parametrize(
    "malformed",
    [
        None,
        "not a graph",
        [],
        {"steps": None, "edges": "nope"},
        {"steps": "nope"},
        {"steps": [None, 1, "x", {}, {"key": 5, "type": "t"}, {"key": "k"}, {"type": "t"}, {"key": "", "type": "t"}]},
        {"steps": [step("a"), step("a", name="duplicate")], "edges": [None, {"from": ["a"], "to": {}}]},
        {"steps": [step("a")], "edges": [{"from": "a", "to": "nowhere"}, {"from": "a", "to": "a", "when": 3}]},
        {"steps": [{"key": "a", "type": "t", "config": {1: {2, 3}}, "name": 7}]},
    ],
)
def test_malformed_input_does_not_raise(malformed: Any) -> None:
    for before, after in ((malformed, CLAIMS_TRIAGE_GRAPH), (CLAIMS_TRIAGE_GRAPH, malformed), (malformed, malformed)):
        diff = version_diff(before, malformed, after, {"properties": "nope", "required": None})
        diff.summary()
        diff_text(diff)


def test_malformed_steps_are_skipped_silently() -> None:
    graph, _ = demo()
    graph["steps"].insert(1, {"type": "data.transform"})  # no key
    graph["steps"].insert(1, "garbage")
    graph["steps"].append({"key": "extract", "type": "other"})  # a duplicate key: the first wins

    assert diff_from_demo(graph).is_empty


def test_large_versions() -> None:
    before = {"steps": [step(f"s{i}", config={"n": i}) for i in range(200)]}
    after = copy.deepcopy(before)
    after["steps"][100]["config"]["n"] = -1
    del after["steps"][150]

    diff = version_diff(before, {}, after, {})

    assert [(change.key, change.kind) for change in diff.steps] == [
        ("s100", "changed"),
        ("s150", "removed"),
        ("s151", "moved"),
    ]
    assert diff.steps[2].after_position == 'after "s149"'
