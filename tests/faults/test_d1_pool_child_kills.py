"""D1: pool children SIGKILLed at random crash points during a 5-step workflow with an external call.

Expected (reliability-anchors B1): each killed step is taken back once its lease expires and retried on the
same or another worker; the run resumes at the step without a committed result; no step result twice; the
sink applies each effect once (raw deliveries may repeat); I1-I5 hold.

`killed_runs` counts the runs that had a step taken back from a killed worker; `kills` counts every pool
child the workers saw die by SIGKILL (a kill right after a commit needs no takeover).
"""

from __future__ import annotations

import time

import pytest

from apps.runs.effects import effect_key
from apps.runs.models import Run, StepRun
from apps.runs.services import run_start
from tests.faults.harness import LEASE_SECONDS, check_invariants, percentile, sized, wait_runs
from tests.faults.workflows import five_step_graph, publish
from tests.support.figures import record_figure

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

N = sized(20, 200)
# Per crash point per attempt; with four or five points per step about one kill per run.
P = 0.04
POINTS = (
    "after_claim",
    "mid_step",
    "after_external_call",
    "before_result_commit",
    "after_result_commit_before_dispatch",
)


@pytest.mark.timeout(sized(180, 1500))
def test_d1_killed_pool_children_complete_every_run_without_duplicate_effects(analyst, fleet, sink):
    workflow = publish(analyst, "D1 five steps", five_step_graph(sink.url))
    faults = ",".join(f"{point}:{P}" for point in POINTS)
    fleet.worker(concurrency=2, AIOS_FAULTS=faults, wait=False)
    fleet.worker(concurrency=2, AIOS_FAULTS=faults, AIOS_FAULTS_SEED="7", wait=False)
    fleet.beat(wait=False)
    fleet.ready()

    started = time.monotonic()
    runs = [run_start(actor=analyst, workflow=workflow, inputs={"n": n})[0] for n in range(N)]
    ids = [run.pk for run in runs]
    wait_runs(ids, timeout=sized(150, 1400), give_up=fleet.kill_loop(limit=12 * N))
    elapsed = time.monotonic() - started

    invariants = check_invariants(ids)
    killed_steps = StepRun.objects.filter(run_id__in=ids, restarts__gt=0)
    killed_runs = sorted({step.run_id for step in killed_steps})
    kills = fleet.kills_observed()
    ledger = sink.ledger()
    keys = {effect_key(run, "send") for run in Run.objects.filter(pk__in=ids)}
    duplicates = sink.duplicate_effects()
    unapplied = [key for key in keys if ledger.get(key) is None or ledger[key].effective_applies != 1]
    raw_repeats = sum(row.raw_deliveries - 1 for row in ledger.values())
    durations = {run.pk: run.duration_seconds or 0 for run in Run.objects.filter(pk__in=ids)}
    clean = [seconds for pk, seconds in durations.items() if pk not in killed_runs]
    killed = [durations[pk] for pk in killed_runs]
    completed = invariants.succeeded
    ok = completed == N and duplicates == 0 and not unapplied and not invariants.problems and killed_runs
    record_figure(
        f"D1 completed {completed}/{N} duplicate_effects {duplicates} killed_runs {len(killed_runs)} kills {kills} "
        f"raw_duplicate_deliveries {raw_repeats} run_seconds_p95 killed {percentile(killed, 0.95):.1f} "
        f"clean {percentile(clean, 0.95):.1f} (lease {LEASE_SECONDS} s) elapsed_s {elapsed:.0f} "
        f"{'ok' if ok else 'miss'}"
    )
    assert killed_runs, "no crash point fired: the test exercised nothing"
    assert not invariants.problems, "\n".join(invariants.problems)
    twice = [(key, row.effective_applies) for key, row in ledger.items() if row.effective_applies > 1]
    assert duplicates == 0, f"effects applied more than once: {twice}"
    assert not unapplied, f"{len(unapplied)} runs' effects were not applied exactly once"
