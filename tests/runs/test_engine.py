"""The next-step decision is a pure function of the graph and the recorded states."""

from __future__ import annotations

from apps.runs.engine import Decision, decide

GRAPH = {"steps": [{"key": "a"}, {"key": "b"}, {"key": "c"}]}


def test_first_step_starts_a_new_run():
    assert decide(GRAPH, {}) == Decision(start=("a",), run_status=None)


def test_next_step_starts_after_success():
    assert decide(GRAPH, {"a": "succeeded", "b": "pending"}) == Decision(start=("b",), run_status=None)


def test_running_step_blocks_the_next():
    assert decide(GRAPH, {"a": "succeeded", "b": "running"}) == Decision(start=(), run_status=None)


def test_failure_fails_the_run():
    assert decide(GRAPH, {"a": "succeeded", "b": "failed"}) == Decision(start=(), run_status="failed")


def test_all_done_succeeds_and_skips_count_as_done():
    states = {"a": "succeeded", "b": "skipped", "c": "succeeded"}
    assert decide(GRAPH, states) == Decision(start=(), run_status="succeeded")


def test_same_input_same_decision():
    states = {"a": "succeeded"}
    assert decide(GRAPH, states) == decide(GRAPH, dict(states))
