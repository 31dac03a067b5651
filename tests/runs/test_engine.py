"""The next-step decision is a pure function of the graph and the recorded step states."""

from __future__ import annotations

from apps.runs.engine import Decision, StepRecord, decide, reusable_before, run_output

SEQUENTIAL = {"steps": [{"key": "a"}, {"key": "b"}, {"key": "c"}]}


def records(**states: str) -> dict[str, StepRecord]:
    return {key: StepRecord(*state.split(":")) for key, state in states.items()}


def test_sequential_graph_starts_with_its_first_step():
    assert decide(SEQUENTIAL, {}) == Decision(start=("a",))


def test_next_step_starts_after_success_and_a_running_step_blocks():
    assert decide(SEQUENTIAL, records(a="succeeded")) == Decision(start=("b",))
    assert decide(SEQUENTIAL, records(a="succeeded", b="running")) == Decision()


def test_unhandled_failure_fails_the_run():
    assert decide(SEQUENTIAL, records(a="succeeded", b="failed")) == Decision(run_status="failed", failed_step="b")


def test_all_done_succeeds():
    assert decide(SEQUENTIAL, records(a="succeeded", b="skipped", c="succeeded")) == Decision(run_status="succeeded")


BRANCHING = {
    "steps": [{"key": "check"}, {"key": "small"}, {"key": "large"}, {"key": "notify"}],
    "edges": [
        {"from": "check", "to": "small", "when": "true"},
        {"from": "check", "to": "large", "when": "false"},
        {"from": "small", "to": "notify"},
        {"from": "large", "to": "notify"},
    ],
}


def test_if_takes_one_branch_skips_the_other_and_merges():
    decision = decide(BRANCHING, records(check="succeeded:true"))
    assert decision == Decision(start=("small",), skip=("large",))
    assert decide(BRANCHING, records(check="succeeded:true", small="succeeded", large="skipped")) == Decision(
        start=("notify",)
    )


def test_skips_cascade_through_a_dead_branch():
    graph = {
        "steps": [{"key": "check"}, {"key": "x"}, {"key": "y"}, {"key": "z"}],
        "edges": [
            {"from": "check", "to": "x", "when": "true"},
            {"from": "x", "to": "y"},
            {"from": "check", "to": "z", "when": "false"},
        ],
    }
    assert decide(graph, records(check="succeeded:false")) == Decision(start=("z",), skip=("x", "y"))


PARALLEL = {
    "steps": [{"key": "fan"}, {"key": "left"}, {"key": "right"}, {"key": "join"}, {"key": "first", "join": "any"}],
    "edges": [
        {"from": "fan", "to": "left"},
        {"from": "fan", "to": "right"},
        {"from": "left", "to": "join"},
        {"from": "right", "to": "join"},
        {"from": "left", "to": "first"},
        {"from": "right", "to": "first"},
    ],
}


def test_parallel_fan_out_and_fan_in_all_or_any():
    assert decide(PARALLEL, records(fan="succeeded")) == Decision(start=("left", "right"))
    halfway = records(fan="succeeded", left="succeeded", right="running")
    assert decide(PARALLEL, halfway) == Decision(start=("first",))  # "any" goes, "all" waits
    done = records(fan="succeeded", left="succeeded", right="succeeded", first="succeeded")
    assert decide(PARALLEL, done) == Decision(start=("join",))


def test_error_branch_handles_a_failure():
    graph = {
        "steps": [{"key": "call"}, {"key": "next"}, {"key": "recover"}],
        "edges": [{"from": "call", "to": "next"}, {"from": "call", "to": "recover", "when": "error"}],
    }
    assert decide(graph, records(call="failed")) == Decision(start=("recover",), skip=("next",))
    assert decide(graph, records(call="failed", next="skipped", recover="succeeded")) == Decision(
        run_status="succeeded"
    )


def test_waiting_steps_keep_the_run_open():
    assert decide(SEQUENTIAL, records(a="waiting")) == Decision()


def test_same_history_same_decision():
    history = records(fan="succeeded", left="succeeded", right="failed")
    assert decide(PARALLEL, history) == decide(PARALLEL, dict(history))


def test_run_output_is_the_single_sink_or_a_map_of_sinks():
    assert run_output(SEQUENTIAL, {"a": {"x": 1}, "c": {"y": 2}}) == {"y": 2}
    assert run_output(PARALLEL, {"join": {"j": 1}, "first": {"f": 1}}) == {"join": {"j": 1}, "first": {"f": 1}}


def test_restart_reuses_everything_not_downstream_of_the_restart_step():
    succeeded = ["fan", "left", "right", "join", "first"]
    assert reusable_before(PARALLEL, "right", succeeded) == {"fan", "left"}
