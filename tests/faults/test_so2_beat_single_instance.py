"""SO2: two beat processes started, one schedule sent; when the sending beat dies, the other takes over.

Two real `celery beat` processes run the product's schedule (workers/celery.py) against the same private Redis,
as two hosts of a scaled-out deployment or a rolling update would. No worker consumes, so every message either
beat sends stays in the broker's queue, where the test reads it: each message names its task and, in Celery's
`origin` header, the process that sent it.

Expected: while both run, every message comes from one beat (the lease holder, workers/beat.py); after that beat
is SIGKILLed, messages come from the other one, and only from it; a beat stopped cleanly gives the lease up.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tests.faults.harness import BEAT_LEASE_SECONDS, SWEEP_SECONDS, RedisServer
from tests.support.figures import record_figure
from workers.beat import LEASE_KEY

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

# Every periodic task is routed to the default queue (workers/celery.py), which no process consumes here.
QUEUE = "default"
ORIGIN = re.compile(r"^gen(\d+)@")
# How many sweeps to watch in each phase: the sweep is the schedule's most frequent entry (SWEEP_SECONDS).
SWEEPS_PER_PHASE = 8


@dataclass(frozen=True)
class Sent:
    task: str
    pid: int
    at: float


def take_sent(redis_server: RedisServer, timeout: float = 1.0) -> Sent | None:
    """The next message beat put on the queue, or None if none came within `timeout` seconds."""
    popped = redis_server.client().blpop([QUEUE], timeout=timeout)
    if popped is None:
        return None
    headers = json.loads(popped[1])["headers"]
    found = ORIGIN.match(headers["origin"])
    assert found, f"a message without a sender's pid in its origin: {headers['origin']!r}"
    return Sent(headers["task"], int(found.group(1)), time.monotonic())


def collect(redis_server: RedisServer, *, until: Callable[[list[Sent]], bool], timeout: float, what: str) -> list[Sent]:
    """Messages as they arrive until `until(messages)` holds; AssertionError after `timeout` seconds."""
    messages: list[Sent] = []
    deadline = time.monotonic() + timeout
    while not until(messages):
        if time.monotonic() > deadline:
            seen = sorted({(m.task, m.pid) for m in messages})
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; seen (task, pid): {seen}")
        sent = take_sent(redis_server)
        if sent is not None:
            messages.append(sent)
    return messages


def sweeps_from(pid: int, count: int) -> Callable[[list[Sent]], bool]:
    return lambda messages: sum(m.pid == pid and m.task == "runs.sweep" for m in messages) >= count


@pytest.mark.timeout(240)
def test_so2_two_beats_send_one_schedule_and_the_survivor_takes_over(fleet, redis_server):
    # Anchors every 2 s: a second entry of the schedule, besides the sweep, within each phase.
    first = fleet.beat(wait=False, AIOS_AUDIT_ANCHOR_SECONDS="2")
    second = fleet.beat(wait=False, AIOS_AUDIT_ANCHOR_SECONDS="2")
    fleet.ready()
    beats = {first.pid: first, second.pid: second}
    client = redis_server.client()
    client.delete(QUEUE)  # what one beat sent before the other was up

    # Phase 1: both beats run. Wait for one of them to send enough sweeps; the holder is whoever sent them.
    phase1 = collect(
        redis_server,
        until=lambda messages: any(sweeps_from(pid, SWEEPS_PER_PHASE)(messages) for pid in beats),
        timeout=SWEEPS_PER_PHASE * SWEEP_SECONDS * 10 + 30,
        what=f"{SWEEPS_PER_PHASE} sweeps from one beat",
    )
    senders = {m.pid for m in phase1}
    leader_pid = max(beats, key=lambda pid: sum(m.pid == pid for m in phase1))
    [survivor_pid] = [pid for pid in beats if pid != leader_pid]
    holder = (client.get(LEASE_KEY) or b"").decode()
    assert beats[survivor_pid].alive(), beats[survivor_pid].log_text()[-2000:]
    duplicates_while_both = sum(m.pid != leader_pid for m in phase1)
    tasks_sent = sorted({m.task for m in phase1})

    # Phase 2: the sending beat dies without a word (SIGKILL: no clean release of its lease).
    killed_at = time.monotonic()
    beats[leader_pid].kill_group()
    phase2 = collect(
        redis_server,
        until=sweeps_from(survivor_pid, SWEEPS_PER_PHASE),
        timeout=BEAT_LEASE_SECONDS * 20 + SWEEPS_PER_PHASE * SWEEP_SECONDS * 10,
        what=f"the other beat to take over and send {SWEEPS_PER_PHASE} sweeps",
    )
    first_from_survivor = next(m for m in phase2 if m.pid == survivor_pid)
    after_takeover = phase2[phase2.index(first_from_survivor) :]
    duplicates_after = sum(m.pid != survivor_pid for m in after_takeover)
    takeover_seconds = first_from_survivor.at - killed_at

    # A beat that stops cleanly gives the lease up at once (the next one need not wait for it to expire).
    held_by_survivor = (client.get(LEASE_KEY) or b"").decode()
    beats[survivor_pid].stop()
    released = client.get(LEASE_KEY) is None

    duplicate_ticks = duplicates_while_both + duplicates_after
    took_over = first_from_survivor is not None and duplicates_after == 0
    ok = (
        len(beats) == 2
        and senders == {leader_pid}
        and duplicate_ticks == 0
        and f":{leader_pid}:" in holder
        and took_over
        and f":{survivor_pid}:" in held_by_survivor
        and released
    )
    record_figure(
        f"SO2 beat_instances {len(beats)} duplicate_ticks {duplicate_ticks} "
        f"takeover {'ok' if took_over else 'missed'} takeover_s {takeover_seconds:.1f} {'ok' if ok else 'FAIL'}"
    )
    assert senders == {leader_pid}, f"both beats sent while both ran: {sorted(senders)} (leader {leader_pid})"
    assert duplicate_ticks == 0
    assert f":{leader_pid}:" in holder, f"the lease names {holder!r}, not the beat that sent (pid {leader_pid})"
    assert "runs.sweep" in tasks_sent and "audit.anchor_write" in tasks_sent, tasks_sent
    assert took_over
    assert f":{survivor_pid}:" in held_by_survivor, held_by_survivor
    assert released, "a beat stopped cleanly left its lease behind"
    assert ok
