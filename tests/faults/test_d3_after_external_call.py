"""D3: the worker dies right after the external call (the sink applied the effect) and before the step's
result commits: Temporal's completed-but-unreported case.

Phase 1: a worker runs with `after_external_call:1.0` and no sweeper, so every run's call is followed by a
SIGKILL of its pool child, once. When the sink has seen every run's call, that worker is killed; beat (the
sweeper) and a worker without faults start. The sweeper takes the steps back when their leases expire and
the retry resends the same Idempotency-Key: the sink must apply each effect exactly once, and must have
seen at least two deliveries per key (proof that the path was exercised).

The same crash on an `at_most_once` step that calls a system which cannot deduplicate (the sink with
`dedupe=False`): the retry must not call again blindly; the step waits on an incident for a person.
"""

from __future__ import annotations

import pytest

from apps.runs.effects import effect_key
from apps.runs.models import EffectRecord, Incident, Run, StepRun
from apps.runs.services import run_start
from tests.faults.harness import check_invariants, describe_runs, sized, wait_runs, wait_until
from tests.faults.workflows import EFFECT_INPUT, effect_step, publish
from tests.support.figures import record_figure
from tests.support.sink import Sink

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

N = sized(12, 120)
AT_MOST_ONCE = sized(3, 20)


def graph(sink_url: str, **send: object) -> dict:
    return {
        "steps": [
            {"key": "prepare", "type": "data.transform", "config": {"fields": {"amount": "input.n * 10"}}},
            effect_step(sink_url, **send),
            {"key": "finish", "type": "data.transform", "config": {"fields": {"effect": "steps.send.body.effect"}}},
        ]
    }


@pytest.mark.timeout(sized(120, 900))
def test_d3_retry_after_external_call_resends_the_same_key_and_applies_once(analyst, fleet, sink, tmp_path, request):
    workflow = publish(analyst, "D3 after external call", graph(sink.url))
    plain = Sink(tmp_path / "no-dedupe.sqlite3", dedupe=False).start()
    request.addfinalizer(plain.stop)
    careful = publish(
        analyst, "D3 at most once", graph(plain.url, config={"delivery": "at_most_once"}), input_schema=EFFECT_INPUT
    )
    dying = fleet.worker(concurrency=4, AIOS_FAULTS="after_external_call:1.0")
    ids = [run_start(actor=analyst, workflow=workflow, inputs={"n": n})[0].pk for n in range(N)]
    keys = {run.pk: effect_key(run, "send") for run in Run.objects.filter(pk__in=ids)}
    at_most_once = [run_start(actor=analyst, workflow=careful, inputs={"n": n})[0].pk for n in range(AT_MOST_ONCE)]

    def every_key_delivered() -> bool:
        ledger, other = sink.ledger(), plain.ledger()
        return all(key in ledger and ledger[key].effective_applies == 1 for key in keys.values()) and len(other) == len(
            at_most_once
        )

    wait_until(
        every_key_delivered,
        timeout=sized(90, 400),
        what="the sink to see every run's call once",
        detail=lambda: f"{len(sink.ledger())} of {N} keys seen",
    )
    dying.kill_group()
    fleet.worker(concurrency=4, wait=False)
    fleet.beat(wait=False)
    fleet.ready()

    wait_runs(ids, timeout=sized(90, 800))
    invariants = check_invariants(ids)
    wait_until(
        lambda: Incident.objects.filter(run_id__in=at_most_once, resolved_at=None).count() == len(at_most_once),
        timeout=30,
        what="an incident on every at-most-once step whose outcome is unknown",
        detail=lambda: describe_runs(at_most_once),
    )
    blind_retries = sum(row.raw_deliveries - 1 for row in plain.ledger().values())
    plain.stop()
    ledger = sink.ledger()
    once = [pk for pk, key in keys.items() if ledger[key].effective_applies == 1]
    exercised = [pk for pk, key in keys.items() if ledger[key].raw_deliveries >= 2]
    # The step's output is the sink's answer: a replay of the first (applied) delivery, seen by a later attempt.
    outputs = dict(StepRun.objects.filter(run_id__in=ids, step_key="send").values_list("run_id", "output"))
    replayed = [pk for pk in ids if outputs[pk]["body"]["applied"] is False and outputs[pk]["body"]["effect"] == 1]
    attempts = dict(EffectRecord.objects.filter(run_id__in=ids).values_list("run_id", "attempts"))
    ok = len(once) == N and len(exercised) == N and not invariants.problems and blind_retries == 0
    record_figure(
        f"D3 effects_per_key_1 {len(once)}/{N} raw_deliveries_ge_2 {len(exercised)}/{N} "
        f"replayed_answers {len(replayed)}/{N} effect_ledger_attempts_max {max(attempts.values(), default=0)} "
        f"at_most_once_incidents {len(at_most_once)}/{len(at_most_once)} blind_retries {blind_retries} "
        f"{'ok' if ok else 'miss'}"
    )
    assert not invariants.problems, "\n".join(invariants.problems)
    assert len(once) == N, (
        f"effects not applied exactly once: {[(pk, ledger[keys[pk]]) for pk in ids if pk not in once]}"
    )
    assert len(exercised) == N, f"runs whose call was not retried: {sorted(set(ids) - set(exercised))}"
    assert blind_retries == 0, "an at-most-once call was sent again after an uncertain outcome"
