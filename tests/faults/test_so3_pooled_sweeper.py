"""SO3: the sweeper's one-at-a-time rule behind PgBouncer in transaction mode.

Two sweeper processes reach the test database through one PgBouncer whose pool has a single server connection,
so every transaction of both runs on the same PostgreSQL session, as pooled clients share sessions in
production. A session-level advisory lock taken there would stay with that session, where the other process
inherits it (both sweep at once) and nobody can release it. The lease row must give:

- never two sweeps inside the duty at once (spans recorded by each sweep while it holds the duty, 0 overlapping);
- a sweeper SIGKILLed while it holds the duty keeps it only until its lease runs out: the other takes over;
- nothing left on the pooled session afterwards (no advisory lock in pg_locks).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection

from apps.core.env import database_from_url
from tests.faults.harness import ServiceProcess, wait_until
from tests.support.figures import record_figure
from tests.support.pgbouncer import PgBouncer
from tests.support.processes import service_env

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

LEASE_SECONDS = 2


@pytest.fixture
def bouncer(transactional_db: Any) -> Iterator[PgBouncer]:
    app_role = database_from_url("DATABASE_URL", settings.DATABASE_URL)
    with PgBouncer(roles=[app_role, connection.settings_dict], pool_size=1, name="so3-pgbouncer") as running:
        yield running


def probe_env(bouncer: PgBouncer) -> dict[str, str]:
    database = str(connection.settings_dict["NAME"])
    app_role = database_from_url("DATABASE_URL", settings.DATABASE_URL)
    return service_env(
        DATABASE_URL=bouncer.url_for(app_role, database=database),
        DATABASE_OWNER_URL=bouncer.url_for(connection.settings_dict, database=database),
        AIOS_DATABASE_POOLER="transaction",
        AIOS_SWEEP_LEASE_SECONDS=str(LEASE_SECONDS),
    )


def probe(name: str, record: Path, env: dict[str, str], *, seconds: float, hold: bool = False) -> ServiceProcess:
    argv = [sys.executable, "-m", "tests.faults.sweeper_probe", "--record", str(record), "--seconds", str(seconds)]
    return ServiceProcess(name, [*argv, *(["--hold"] if hold else [])], env).start()


def spans(record: Path) -> list[tuple[str, float, float]]:
    found = []
    for line in record.read_text().splitlines() if record.exists() else []:
        parts = line.split()
        if len(parts) == 3 and parts[1] not in ("skipped", "holding"):
            found.append((parts[0], float(parts[1]), float(parts[2])))
    return found


def skipped(record: Path) -> int:
    return sum(int(line.split()[2]) for line in record.read_text().splitlines() if line.split()[1:2] == ["skipped"])


def overlapping(found: list[tuple[str, float, float]]) -> int:
    """Pairs of spans of different processes that share a moment."""
    return sum(
        1
        for i, (pid_a, start_a, end_a) in enumerate(found)
        for pid_b, start_b, end_b in found[i + 1 :]
        if pid_a != pid_b and start_a < end_b and start_b < end_a
    )


def advisory_locks() -> int:
    """Advisory locks anyone holds in the test database (a pooled session keeps a leaked one)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
            "WHERE l.locktype = 'advisory' AND d.datname = current_database()"
        )
        return int(cursor.fetchone()[0])


@pytest.mark.timeout(120)
def test_so3_two_sweepers_behind_pgbouncer_never_overlap_and_a_killed_ones_duty_lapses(bouncer, tmp_path):
    env = probe_env(bouncer)

    # Two sweepers, side by side, for a few seconds.
    record = tmp_path / "side-by-side.txt"
    pair = [probe(f"so3-sweeper{i}", record, env, seconds=6) for i in (1, 2)]
    wait_until(lambda: all(p.exit_code() is not None for p in pair), timeout=60, what="both sweepers to finish")
    assert [p.exit_code() for p in pair] == [0, 0], "\n".join(p.log_text()[-2000:] for p in pair)
    side_by_side = spans(record)
    overlaps = overlapping(side_by_side)
    contended = skipped(record)
    sweepers_that_swept = len({pid for pid, _, _ in side_by_side})

    # One sweeper holds the duty and is SIGKILLed inside it; another must get the duty once the lease runs out.
    held = tmp_path / "held.txt"
    holder = probe("so3-holder", held, env, seconds=60, hold=True)
    wait_until(lambda: held.exists() and "holding" in held.read_text(), timeout=30, what="the holder inside a sweep")
    holder.kill_group()
    killed_at = time.time()
    after = tmp_path / "after-kill.txt"
    successor = probe("so3-successor", after, env, seconds=LEASE_SECONDS * 4)
    wait_until(lambda: successor.exit_code() is not None, timeout=60, what="the successor to finish")
    assert successor.exit_code() == 0, successor.log_text()[-2000:]
    taken_over = [start for _, start, _ in spans(after)]
    locks_left = advisory_locks()

    ok = overlaps == 0 and bool(taken_over) and locks_left == 0 and len(side_by_side) >= 2
    record_figure(
        f"SO3 pgbouncer transaction_pool 1 sweepers 2 sweeps {len(side_by_side)} by {sweepers_that_swept} "
        f"skipped_while_held {contended} overlapping {overlaps} "
        f"taken_over_after_kill {'yes' if taken_over else 'no'}"
        + (f" after_s {min(taken_over) - killed_at:.1f} (lease {LEASE_SECONDS})" if taken_over else "")
        + f" advisory_locks_left {locks_left} {'ok' if ok else 'miss'}"
    )
    assert len(side_by_side) >= 2, "the sweepers swept less than twice: the test exercised nothing"
    assert overlaps == 0, f"{overlaps} pairs of sweeps held the duty at the same time: {side_by_side}"
    assert taken_over, "after the holder was killed, no other sweeper ever got the duty: it stuck"
    assert locks_left == 0, f"{locks_left} advisory locks are left on the pooled PostgreSQL session"
