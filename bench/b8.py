"""B8: the physical floor (Redis round trip, single-row commit, a progress event) and commits per step.

Counting synchronous commits. Three independent counters are read around one 40-step run (and, as a check of
the method, around one peer chain, which must come out at exactly 2 commits per step):

- WAL commit records (`pg_waldump --stats=record` over the run's LSN range): every transaction that wrote
  anything, synchronous or not; read-only transactions (the bench's own polling) write none. The engine's
  only asynchronous commit is the outbox relay's mark (`SET LOCAL synchronous_commit TO OFF`), one per
  relayed Outbox row, so synchronous commits = commit records - Outbox rows relayed in the window.
- `pg_stat_io` WAL fsyncs by client backends (PostgreSQL 16+; 0 when fsync is off): the flushes a session
  waited for. Group commit can merge several, and the WAL writer flushes async commits in the background.
- `pg_stat_database.xact_commit`: every transaction, read-only ones included, so an upper bound.
Limits: autovacuum or another client of the same server in the window adds commit records (the bench runs
alone on its own stack, so this is rare); pg_waldump needs the server's pg_wal directory on this machine.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import redis

from bench.common import Goal, RunTiming, bench_user, linear_workflow, median, peer_chain_run, print_goals, run_and_wait
from bench.stack import Services

STEPS = 40
# pg_stat_io and pg_stat_database are updated by each backend at most about once a second.
STATS_SETTLE_SECONDS = 1.2


# The floor -------------------------------------------------------------------------------------------------


def redis_round_trip_ms(redis_url: str) -> tuple[float, str]:
    """Average PING round trip at one client, from redis-benchmark when installed."""
    client = redis.Redis.from_url(redis_url)
    host, port = client.connection_pool.connection_kwargs["host"], client.connection_pool.connection_kwargs["port"]
    binary = shutil.which("redis-benchmark")
    if binary:
        out = subprocess.run(
            [binary, "-h", str(host), "-p", str(port), "-c", "1", "-n", "20000", "-t", "ping", "--csv", "-q"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        # CSV rows: "test","rps","avg_latency_ms",...; PING_MBULK is the RESP form every client uses.
        for line in out.splitlines():
            fields = [f.strip('"') for f in line.split(",")]
            if fields[0] == "PING_MBULK":
                return float(fields[2]), "redis-benchmark -c1 -n20000 PING_MBULK (avg)"
    samples = []
    for _ in range(20000):
        started = time.perf_counter()
        client.ping()
        samples.append(time.perf_counter() - started)
    return sum(samples) / len(samples) * 1000, "redis-py PING loop x20000 (avg)"


def _server_bindir(conn: psycopg.Connection[Any]) -> Path | None:
    row = conn.execute("SELECT setting FROM pg_config WHERE name = 'BINDIR'").fetchone()
    return Path(row[0]) if row else None


def pg_insert_ms(svc: Services) -> tuple[float, str]:
    """Average latency of a single-row jsonb INSERT in autocommit at one client."""
    with psycopg.connect(svc.database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_floor (id bigserial PRIMARY KEY, payload jsonb)")
        bindir = _server_bindir(conn)
        info = conn.info
        pgbench = bindir / "pgbench" if bindir and (bindir / "pgbench").is_file() else None
        if pgbench is not None:
            with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
                script.write("INSERT INTO bench_floor (payload) VALUES ('{\"a\": 1}');\n")
            out = subprocess.run(
                [
                    str(pgbench),
                    "-h",
                    info.host,
                    "-p",
                    str(info.port),
                    "-U",
                    info.user,
                    "-n",
                    "-c",
                    "1",
                    "-T",
                    "5",
                    "-f",
                    script.name,
                    info.dbname,
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            Path(script.name).unlink()
            found = re.search(r"latency average = ([\d.]+) ms", out)
            if found:
                return float(found.group(1)), "pgbench -c1 -T5 single-row INSERT (avg)"
        samples = []
        for _ in range(5000):
            started = time.perf_counter()
            conn.execute("INSERT INTO bench_floor (payload) VALUES ('{\"a\": 1}')")
            samples.append(time.perf_counter() - started)
        return sum(samples) / len(samples) * 1000, "psycopg loop x5000 single-row INSERT (avg)"


def layer_round_trip_ms(redis_url: str, count: int = 1000) -> float:
    """Median group_send -> receive on the product's channel layer class, one process."""
    from channels_redis.pubsub import RedisPubSubChannelLayer

    async def probe() -> float:
        layer = RedisPubSubChannelLayer(hosts=[redis_url])
        channel = await layer.new_channel()
        await layer.group_add("bench.floor", channel)
        samples = []
        for i in range(count):
            started = time.perf_counter()
            await layer.group_send("bench.floor", {"type": "probe", "i": i})
            await layer.receive(channel)
            samples.append(time.perf_counter() - started)
        await layer.group_discard("bench.floor", channel)
        await layer.flush()
        return median(samples) * 1000

    return asyncio.run(probe())


@dataclass(frozen=True)
class Floor:
    redis_ms: float
    redis_method: str
    insert_ms: float
    insert_method: str
    event_ms: float

    @property
    def per_step_ms(self) -> float:
        """The reference anchors' per-step floor: 2 broker ops + 3 commits + 1 progress event."""
        return 2 * self.redis_ms + 3 * self.insert_ms + self.event_ms


def floor_measure(svc: Services) -> Floor:
    redis_ms, redis_method = redis_round_trip_ms(svc.redis_url)
    insert_ms, insert_method = pg_insert_ms(svc)
    return Floor(redis_ms, redis_method, insert_ms, insert_method, layer_round_trip_ms(svc.redis_url))


# Commits per step ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    lsn: str
    xact_commit: int
    wal_fsyncs_client: int
    wal_fsyncs_all: int
    outbox_max_id: int


def _snapshot(conn: psycopg.Connection[Any]) -> Snapshot:
    time.sleep(STATS_SETTLE_SECONDS)
    conn.execute("SELECT pg_stat_clear_snapshot()")
    lsn = str(conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0])  # type: ignore[index]
    xact = conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()").fetchone()
    fsyncs = conn.execute(
        "SELECT coalesce(sum(fsyncs) FILTER (WHERE backend_type = 'client backend'), 0), coalesce(sum(fsyncs), 0) "
        "FROM pg_stat_io WHERE object = 'wal'"
    ).fetchone()
    outbox = conn.execute("SELECT coalesce(max(id), 0) FROM runs_outbox").fetchone()
    assert xact is not None and fsyncs is not None and outbox is not None
    return Snapshot(lsn, int(xact[0]), int(fsyncs[0]), int(fsyncs[1]), int(outbox[0]))


def _wal_commit_records(conn: psycopg.Connection[Any], start: str, end: str) -> int | None:
    bindir = _server_bindir(conn)
    wal_dir = Path(str(conn.execute("SHOW data_directory").fetchone()[0])) / "pg_wal"  # type: ignore[index]
    if bindir is None or not (bindir / "pg_waldump").is_file() or not wal_dir.is_dir():
        return None
    conn.execute("SELECT pg_switch_wal()")  # everything up to `end` is then in closed segment files
    out = subprocess.run(
        [str(bindir / "pg_waldump"), "--stats=record", "-p", str(wal_dir), "-s", start, "-e", end],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    found = re.search(r"^Transaction/COMMIT\s+(\d+)", out, re.MULTILINE)
    return int(found.group(1)) if found else 0


@dataclass(frozen=True)
class Commits:
    label: str
    steps: int
    wal_commits: int | None
    async_commits: int
    client_fsyncs: int
    all_fsyncs: int
    xact_commit: int

    @property
    def synchronous(self) -> int | None:
        return None if self.wal_commits is None else self.wal_commits - self.async_commits

    def row(self) -> list[Any]:
        def per(v: int | None) -> str:
            return "n/a" if v is None else f"{v} ({v / self.steps:.2f})"

        return [
            self.label,
            per(self.wal_commits),
            per(self.async_commits),
            per(self.synchronous),
            per(self.client_fsyncs),
            per(self.all_fsyncs),
            per(self.xact_commit),
        ]


COMMIT_HEADERS = [
    "what (per-step in brackets)",
    "WAL commit records",
    "async (outbox mark)",
    "synchronous",
    "WAL fsyncs: clients",
    "WAL fsyncs: all",
    "xact_commit",
]


def count_commits(svc: Services, label: str, steps: int, action: Any) -> tuple[Commits, Any]:
    """Run `action()` between two snapshots and attribute what PostgreSQL did to it."""
    with psycopg.connect(svc.database_url, autocommit=True) as conn:
        before = _snapshot(conn)
        result = action()
        after = _snapshot(conn)
        commits = _wal_commit_records(conn, before.lsn, after.lsn)
    return (
        Commits(
            label=label,
            steps=steps,
            wal_commits=commits,
            async_commits=after.outbox_max_id - before.outbox_max_id,
            client_fsyncs=after.wal_fsyncs_client - before.wal_fsyncs_client,
            all_fsyncs=after.wal_fsyncs_all - before.wal_fsyncs_all,
            xact_commit=after.xact_commit - before.xact_commit,
        ),
        result,
    )


def commits_table(rows: list[Commits]) -> None:
    from bench.common import table

    table(f"B8 commits around one {STEPS}-step run", COMMIT_HEADERS, [r.row() for r in rows])


def run(svc: Services, *, b1_step_ms: float | None = None, product_commits: Commits | None = None) -> list[Goal]:
    """Floor probes; commits per step and the floor multiple come from B1 when it ran in this invocation."""
    from bench.common import table

    floor = floor_measure(svc)
    table(
        "B8 physical floor (this machine, this run)",
        ["probe", "ms", "method"],
        [
            ["Redis round trip", f"{floor.redis_ms:.3f}", floor.redis_method],
            ["PostgreSQL single-row INSERT, autocommit", f"{floor.insert_ms:.3f}", floor.insert_method],
            ["Channels PubSub group_send -> receive", f"{floor.event_ms:.3f}", "median of 1000, one process"],
            ["per-step floor = 2 Redis + 3 commits + 1 event", f"{floor.per_step_ms:.3f}", "anchors §5"],
        ],
    )
    if b1_step_ms is None or product_commits is None:
        from bench.b1 import steps_spec

        actor = bench_user()
        workflow = linear_workflow(actor, f"B8 {STEPS} steps {time.time_ns()}", steps_spec(STEPS))
        run_and_wait(actor, workflow)  # warm-up
        timings: list[RunTiming] = [run_and_wait(actor, workflow) for _ in range(3)]
        b1_step_ms = median([t.seconds for t in timings]) * 1000 / STEPS
        product_commits, _ = count_commits(svc, "product (AIOS run)", STEPS, lambda: run_and_wait(actor, workflow))
        peer_commits, _ = count_commits(svc, "peer (Celery chain)", STEPS, lambda: peer_chain_run(STEPS))
        commits_table([product_commits, peer_commits])
    multiple = b1_step_ms / floor.per_step_ms
    print(f"\nB1 per step {b1_step_ms:.2f} ms = {multiple:.1f}x the per-step floor of {floor.per_step_ms:.3f} ms")
    synchronous = product_commits.synchronous
    if synchronous is None:  # no pg_waldump access: fall back to the fsyncs clients waited for
        print("pg_waldump unavailable: commits_per_step uses client WAL fsyncs instead")
        synchronous = product_commits.client_fsyncs
    goals = [
        Goal("B8", "commits_per_step", synchronous / STEPS, "<=", 2),
        Goal("B8", "floor_multiple", multiple, "<=", 8),
    ]
    print_goals(goals)
    return goals
