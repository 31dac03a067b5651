"""Step histories for the D10 replay check: what a run recorded, and the engine's decisions along it.

A history is the version's graph plus the run's step outcomes in commit order (read from the audit chain,
which is ordered by commit, with each logic step's branch from its StepRun). Replaying it feeds
`apps.runs.engine.decide` the same records the engine saw after each outcome and collects its decisions.
The engine is a pure function of the graph and the records, so a replay must give the decisions stored
with the history; any difference is a divergence (a behaviour change that would strand or re-route
in-flight runs).

Stored histories live in tests/faults/histories/*.json; `AIOS_RECORD_HISTORIES=1` makes test D10 (re)write
them from the runs it executes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from apps.runs import engine

HISTORY_DIR = Path(__file__).resolve().parent / "histories"


def decision_json(decision: engine.Decision) -> dict[str, Any]:
    return {
        "start": sorted(decision.start),
        "skip": sorted(decision.skip),
        "run_status": decision.run_status,
        "failed_step": decision.failed_step,
    }


def replay(graph: dict[str, Any], events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The engine's decision before the first outcome and after each one. Started steps without an outcome
    yet count as running; skipped steps as skipped, as the engine's own records would have them."""
    records: dict[str, engine.StepRecord] = {}
    decisions = []

    def decide() -> None:
        decision = engine.decide(graph, records)
        for key in decision.start:
            records[key] = engine.StepRecord("running")
        for key in decision.skip:
            records[key] = engine.StepRecord("skipped")
        decisions.append(decision_json(decision))

    decide()
    for event in events:
        records[event["step"]] = engine.StepRecord(event["outcome"], event.get("branch") or None)
        decide()
    return decisions


def history_from_run(run: Any) -> dict[str, Any]:
    """A run's recorded history: its version's graph and its step outcomes in commit order."""
    from apps.audit.models import AuditEvent
    from apps.runs.models import StepRun

    branches = dict(StepRun.objects.filter(run=run).values_list("step_key", "branch"))
    events = []
    for verb, data in (
        # The run's stream is ordered by the run lock, so its positions are the transitions' commit order.
        AuditEvent.objects.filter(stream=f"run:{run.pk}", target_type="runs.run")
        .order_by("stream_seq")
        .values_list("verb", "data")
    ):
        if verb in ("step.succeeded", "step.failed"):
            step = json.loads(data)["step"]
            outcome = verb.removeprefix("step.")
            events.append({"step": step, "outcome": outcome, "branch": branches.get(step) or None})
    return {
        "workflow": run.workflow.slug,
        "version": run.version.number,
        "graph": run.version.graph,
        "events": events,
        "run_status": run.status,
    }


def live_divergences(run: Any, history: dict[str, Any]) -> list[str]:
    """Where the replayed decisions disagree with what the engine did in the live run: the steps it
    started, the steps it skipped, and the run's final status."""
    from apps.runs.models import StepRun

    decisions = replay(history["graph"], history["events"])
    started = set().union(*(d["start"] for d in decisions))
    skipped = set().union(*(d["skip"] for d in decisions))
    rows = StepRun.objects.filter(run=run).values_list("step_key", "state", "queued_at")
    # Started = was ever queued (a step cancelled when the run failed never was).
    live_started = {key for key, _, queued_at in rows if queued_at is not None}
    live_skipped = {key for key, state, _ in rows if state == "skipped"}
    problems = []
    if started != live_started:
        problems.append(f"run {run.pk}: replay starts {sorted(started)}, the run started {sorted(live_started)}")
    if skipped != live_skipped:
        problems.append(f"run {run.pk}: replay skips {sorted(skipped)}, the run skipped {sorted(live_skipped)}")
    final = decisions[-1]["run_status"]
    if final != run.status:
        problems.append(f"run {run.pk}: replay ends {final}, the run ended {run.status}")
    return problems


def stored_histories() -> list[tuple[str, dict[str, Any]]]:
    return [(path.name, json.loads(path.read_text())) for path in sorted(HISTORY_DIR.glob("*.json"))]


def store(name: str, history: dict[str, Any]) -> Path:
    """Write the history with the current engine's decisions along it (the sink's port is left out, so a
    re-recording only changes the file when a decision changed)."""
    HISTORY_DIR.mkdir(exist_ok=True)
    path = HISTORY_DIR / f"{name}.json"
    recorded = {**history, "decisions": replay(history["graph"], history["events"])}
    text = re.sub(r"http://127\.0\.0\.1:\d+", "http://sink.invalid", json.dumps(recorded, indent=2, sort_keys=True))
    path.write_text(text + "\n")
    return path


def stored_divergences() -> tuple[int, list[str]]:
    """(histories checked, divergences) for the stored histories against the current engine."""
    problems = []
    histories = stored_histories()
    for name, history in histories:
        replayed = replay(history["graph"], history["events"])
        for index, (want, got) in enumerate(zip(history["decisions"], replayed, strict=False)):
            if want != got:
                after = "the start" if index == 0 else f"outcome {index} ({history['events'][index - 1]['step']})"
                problems.append(f"{name}: after {after} the engine decides {got}, the history recorded {want}")
        if len(history["decisions"]) != len(replayed):
            problems.append(f"{name}: {len(replayed)} decisions replayed, {len(history['decisions'])} recorded")
    return len(histories), problems
