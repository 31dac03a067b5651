"""D8: steps that outlive their lease, with two workers and a stream of duplicate deliveries.

Three ways a step ends up with two would-be executors, all at once:

- claim race: before any worker runs, 8 threads of the test race `step_run_claim` on the same queued
  steps: exactly one claim per step may win;
- stalled mid-call: the executor's pool child is SIGSTOPped while its call to the sink is open, for longer
  than its lease; the sweeper hands the step to another executor, and the stalled one is resumed while the
  new one is mid-call: its late result must be refused by the fencing token;
- stalled before the call: the executor waits on a lock (the test holds an uncommitted effect-ledger row of
  the step's key) for longer than its lease, so the step is taken over before it called out; when the lock
  goes, the stale executor must not make the call as well;

while a background thread re-sends every unfinished step's task (redeliveries: each must be refused by the
claim). The sink measures executions: two deliveries of one key that overlap in time are two concurrent
executions of one step.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time

import pytest
from django.db import connection, transaction

from apps.runs.effects import effect_key
from apps.runs.lifecycle import step_run_claim
from apps.runs.models import EffectRecord, Run, StepResult, StepRun
from apps.runs.services import run_start
from apps.steps.registry import step_type_get
from tests.faults.harness import (
    FAULT_SEED,
    LEASE_SECONDS,
    SWEEP_SECONDS,
    check_invariants,
    sized,
    timeline,
    wait_runs,
    wait_until,
)
from tests.faults.workflows import effect_step, publish
from tests.support.figures import record_figure

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

RACE_STEPS = sized(20, 500)
CLAIMERS = 8
STALLED_MID_CALL = sized(2, 4)
STALLED_BEFORE_CALL = sized(1, 2)
BACKGROUND = sized(6, 60)
# Each stalled step holds two pool children at once (the stalled executor and its successor): keep spare ones.
CHILDREN_PER_WORKER = sized(3, 8)


def graph(sink_url: str) -> dict:
    return {
        "steps": [
            {"key": "prepare", "type": "data.transform", "config": {"fields": {"amount": "input.n * 10"}}},
            effect_step(sink_url),
            {"key": "finish", "type": "data.transform", "config": {"fields": {"answer": "steps.send.body"}}},
        ]
    }


def taken_over(run_ids: list[int]) -> bool:
    """Every run's "send" step was handed to a new executor by the sweeper and claimed again."""
    steps = StepRun.objects.filter(run_id__in=run_ids, step_key="send", restarts__gte=1, state="running")
    return steps.count() == len(run_ids)


def owner_pid(step: StepRun) -> int:
    """The pid in the lease owner ("host:pid:thread")."""
    return int(step.lease_owner.split(":")[1])


class Redeliverer(threading.Thread):
    """Every 0.25 s, re-sends the tasks of up to PER_TICK unfinished steps of the runs (a seeded sample), as
    a broker that redelivers (visibility timeout, lost acks) would: each must be refused by the claim."""

    PER_TICK = 16

    def __init__(self, run_ids: list[int]) -> None:
        super().__init__(name="redeliverer", daemon=True)
        self.run_ids = run_ids
        self.sent = 0
        self.stop = threading.Event()

    def run(self) -> None:
        from workers.celery import app

        sample = random.Random(FAULT_SEED)
        try:
            while not self.stop.wait(0.25):
                unfinished = list(
                    StepRun.objects.filter(run_id__in=list(self.run_ids), state__in=["queued", "running"])
                    .order_by("pk")
                    .values_list("pk", "step_type")
                )
                for pk, step_type in sample.sample(unfinished, min(len(unfinished), self.PER_TICK)):
                    app.send_task("runs.execute_step", args=[pk], queue=step_type_get(step_type).queue)
                    self.sent += 1
        finally:
            connection.close()


class LedgerLock(threading.Thread):
    """Holds uncommitted effect-ledger rows for the keys (another transaction's insert), so an executor
    recording its intent for one of them waits until `release` is set; then rolls back."""

    def __init__(self, steps: list[tuple[int, str]]) -> None:
        super().__init__(name="ledger-lock", daemon=True)
        self.steps = steps
        self.holding = threading.Event()
        self.release = threading.Event()

    def run(self) -> None:
        try:
            with transaction.atomic():
                for run_id, step_key in self.steps:
                    EffectRecord.objects.create(
                        idempotency_key=effect_key(Run.objects.get(pk=run_id), step_key),
                        run_id=run_id,
                        step_key=step_key,
                    )
                self.holding.set()
                self.release.wait(120)
                transaction.set_rollback(True)
        finally:
            connection.close()


@pytest.mark.timeout(sized(150, 900))
def test_d8_at_most_one_execution_per_step_and_no_stale_commit(analyst, fleet, sink):
    workflow = publish(analyst, "D8 slower than lease", graph(sink.url))

    # 1. The claim race, before any worker exists (the steps' messages wait in Redis meanwhile).
    race_runs = [run_start(actor=analyst, workflow=workflow, inputs={"n": 1000 + n})[0].pk for n in range(RACE_STEPS)]
    race_steps = list(StepRun.objects.filter(run_id__in=race_runs, state="queued").values_list("pk", flat=True))
    wins: dict[int, list[str]] = {pk: [] for pk in race_steps}
    barrier = threading.Barrier(CLAIMERS)

    def claimer(name: str) -> None:
        try:
            barrier.wait()
            for pk in race_steps:
                if step_run_claim(step_run_id=pk, worker=f"test-claimer:{name}") is not None:
                    wins[pk].append(name)
        finally:
            connection.close()

    threads = [threading.Thread(target=claimer, args=(f"c{i}",)) for i in range(CLAIMERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    race_claims = len(race_steps) * CLAIMERS
    race_bad = {pk: names for pk, names in wins.items() if len(names) != 1}

    # 2. Stalled before the call: lock the ledger rows of these runs' effects before any worker starts.
    before_runs = [
        run_start(actor=analyst, workflow=workflow, inputs={"n": 2000 + n, "delay": 1.5})[0].pk
        for n in range(STALLED_BEFORE_CALL)
    ]
    lock = LedgerLock([(pk, "send") for pk in before_runs])
    lock.start()
    assert lock.holding.wait(30)

    fleet.worker(concurrency=CHILDREN_PER_WORKER, wait=False)
    fleet.worker(concurrency=CHILDREN_PER_WORKER, AIOS_FAULTS_SEED="3", wait=False)
    fleet.beat(wait=False)
    fleet.ready()
    mid_runs = [
        run_start(actor=analyst, workflow=workflow, inputs={"n": 3000 + n, "delay": 1.5})[0].pk
        for n in range(STALLED_MID_CALL)
    ]
    background = [
        run_start(actor=analyst, workflow=workflow, inputs={"n": n, "delay": 0.2})[0].pk for n in range(BACKGROUND)
    ]
    all_runs = race_runs + before_runs + mid_runs + background
    redeliverer = Redeliverer(all_runs)
    redeliverer.start()
    stopped: dict[int, tuple[int, int]] = {}  # step run id -> (pid, fencing token of the stalled executor)
    try:
        # 3. Stalled mid-call: SIGSTOP each executor while its call is open at the sink.
        keys = {run.pk: effect_key(run, "send") for run in Run.objects.filter(pk__in=mid_runs)}

        def stop_callers() -> bool:
            open_keys = {d.key for d in sink.deliveries() if d.ended_at is None}
            for step in StepRun.objects.filter(run_id__in=mid_runs, step_key="send", state="running"):
                if step.pk not in stopped and keys[step.run_id] in open_keys:
                    pid = owner_pid(step)
                    os.kill(pid, signal.SIGSTOP)
                    stopped[step.pk] = (pid, step.fencing_token)
                    sink.set_delay(keys[step.run_id], 2.2)  # hold the next executor's call open a while
            return len(stopped) == STALLED_MID_CALL

        wait_until(stop_callers, timeout=60, what="the mid-call steps to be calling the sink", poll=0.02)

        # 4. Stalled before the call: keep the lock until the lease is long gone (the sweeper may have handed
        # the step to a new executor, which then waits on the same lock), then drop it.
        def claimed() -> bool:
            return StepRun.objects.filter(run_id__in=before_runs, step_key="send", attempt__gte=1).count() == len(
                before_runs
            )

        wait_until(claimed, timeout=30, what="the lock-stalled steps to be claimed")
        deadline = time.monotonic() + LEASE_SECONDS + 4 * SWEEP_SECONDS
        while time.monotonic() < deadline and not taken_over(before_runs):
            time.sleep(0.1)
        time.sleep(0.5)  # a new executor reaches the same lock
        before_taken_over = taken_over(before_runs)
        lock.release.set()

        # 5. Resume each stalled executor as soon as its successor is mid-call (the step is running again,
        # under a newer fencing token): the stalled executor's answer is waiting, it goes straight to commit.
        resumed: set[int] = set()

        def resume_behind_successors() -> bool:
            open_keys = {d.key for d in sink.deliveries() if d.ended_at is None}
            for step in StepRun.objects.filter(pk__in=list(stopped)).exclude(pk__in=list(resumed)):
                pid, token = stopped[step.pk]
                if step.state == "running" and step.fencing_token > token and keys[step.run_id] in open_keys:
                    os.kill(pid, signal.SIGCONT)
                    resumed.add(step.pk)
            return len(resumed) == len(stopped)

        wait_until(
            resume_behind_successors,
            timeout=sized(LEASE_SECONDS * 4, LEASE_SECONDS * 15),
            what="the stalled steps' successors to be calling",
            detail=lambda: "\n".join(timeline(pk) for pk in mid_runs),
            poll=0.02,
        )
        time.sleep(1.0)  # the resumed executors try to commit while their successors are still calling
    finally:
        for pid, _ in stopped.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        lock.release.set()
        lock.join(10)

    try:
        wait_runs(all_runs, timeout=sized(90, 600))
    finally:
        redeliverer.stop.set()
        redeliverer.join(10)
    invariants = check_invariants(all_runs)
    concurrency = sink.max_concurrent_deliveries()
    worst = max(concurrency.values(), default=0)
    overlapping = {key: level for key, level in concurrency.items() if level > 1}
    # A stale commit would leave a result whose token or attempt is not the step's final claim's.
    steps = {s.pk: s for s in StepRun.objects.filter(run_id__in=all_runs)}
    stale_accepted = [
        (r.run_id, r.step_key)
        for r in StepResult.objects.filter(run_id__in=all_runs, step_run__isnull=False)
        if (r.fencing_token, r.attempt) != (steps[r.step_run_id].fencing_token, steps[r.step_run_id].attempt)
    ]
    # Every claim after the first is a takeover by the sweeper; any other extra claim is a duplicate executor.
    extra_claims = [(s.run_id, s.step_key, s.attempt, s.restarts) for s in steps.values() if s.attempt > s.restarts + 1]
    stalled_keys = [effect_key(run, "send") for run in Run.objects.filter(pk__in=before_runs + mid_runs)]
    # The stalled executors' tasks ran longer than a lease, to the end: they did try to commit (and were refused).
    stale_finished = sum(seconds >= LEASE_SECONDS for seconds in fleet.task_seconds())
    stale_results = [
        pk
        for pk, (_, token) in stopped.items()
        if StepResult.objects.filter(step_run_id=pk, fencing_token=token).exists()
    ]
    ok = (
        worst <= 1
        and not stale_accepted
        and not stale_results
        and stale_finished >= len(stopped)
        and not extra_claims
        and not race_bad
        and invariants.succeeded == len(all_runs)
        and not invariants.problems
        and sink.duplicate_effects() == 0
    )
    record_figure(
        f"D8 max_concurrent_executions_per_step {worst} stale_token_commits_accepted {len(stale_accepted)} "
        f"claims_per_step_1 {len(race_steps) - len(race_bad)}/{len(race_steps)} over {race_claims} racing claims "
        f"stale_executors_finished {stale_finished} extra_claims {len(extra_claims)} redeliveries {redeliverer.sent} "
        f"stalled_mid_call {len(stopped)} "
        f"stalled_before_call {len(before_runs)} (taken over: {'yes' if before_taken_over else 'no'}) "
        f"overlapping_keys {len(overlapping)} "
        f"completed {invariants.succeeded}/{len(all_runs)} {'ok' if ok else 'miss'}"
    )
    assert not race_bad, f"steps claimed by more than one racing claimer: {race_bad}"
    assert not stale_results, f"results of resumed stale executors were recorded: step runs {stale_results}"
    assert stale_finished >= len(stopped), "the resumed stalled executors never finished: nothing was tested"
    assert not stale_accepted, f"results committed with a stale fencing token: {stale_accepted}"
    assert not extra_claims, f"steps claimed more often than they were taken over: {extra_claims}"
    assert not invariants.problems, "\n".join(invariants.problems)
    assert sink.duplicate_effects() == 0
    assert worst <= 1, (
        f"{len(overlapping)} steps were executing twice at the same time (overlapping sink deliveries): "
        + "; ".join(
            f"{key[:12]}… x{level} "
            + ", ".join(f"[{d.started_at % 1000:.2f}-{(d.ended_at or 0) % 1000:.2f}]" for d in sink.deliveries(key))
            for key, level in overlapping.items()
        )
        + f". Stalled-before-call keys: {[key[:12] for key in stalled_keys]}"
    )
