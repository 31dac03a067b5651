"""B8: the floors of one sequential step and the synchronous commits per step.

Floors. The server floor is the target design's step with nothing in between: `pgbench -f` of the engine's
five step statements (lock the run; fence and finish step k; insert its result; insert its audit event; claim
step k+1) in one transaction on scratch copies of the real tables, plus the broker's two Redis operations and
one channel-layer event. The Python floor is the same five statements and COMMIT from psycopg plus one Redis
PUBLISH, in a loop: what any Python engine must pay. Goals: B1's time per step at most 3x the Python floor
(and, not a DESIGN goal, 8x the server floor).

Counting synchronous commits. Three independent counters are read around one 40-step run (and, as a check of
the method, around one peer chain, which must come out at exactly 2 commits per step):

- `pg_stat_io` WAL fsyncs by client backends (PostgreSQL 16+): the flushes sessions waited for, so the
  synchronous commits. This is the goal figure. Group commit could merge several, but one sequential run has
  nothing to merge with; asynchronous commits are flushed by the WAL writer, not by the session.
- WAL commit records (`pg_waldump --stats=record` over the run's LSN range): every transaction that wrote
  anything, synchronous or not; read-only transactions (the bench's own polling) write none. Minus the outbox
  relay's marks (`SET LOCAL synchronous_commit TO OFF`, one per relayed Outbox row) this is the cross-check.
- `pg_stat_database.xact_commit`: every transaction, read-only ones included, so an upper bound.
A 40-step run also commits its start and its first step's claim (the first step is always reached through the
broker), so the goal counts (synchronous commits - 2) / 40 per sequential step. Limits: autovacuum or another
client of the same server in the window adds commits (the bench runs alone on its own stack, so this is rare);
pg_waldump needs the server's pg_wal directory on this machine; with fsync off the fsync count is zero and the
cross-check is used instead.
"""

from __future__ import annotations

import asyncio
import random
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


# The engine's target step transaction, on scratch copies of the real tables (same columns, defaults and
# indexes, so the same index writes; no foreign keys or triggers): lock the run, fence and finish step k,
# record its result and its audit event, claim step k+1. Five statements and one synchronous commit.
FLOOR_TABLES = {
    "floor_run": "runs_run",
    "floor_steprun": "runs_steprun",
    "floor_stepresult": "runs_stepresult",
    "floor_audit": "audit_auditevent",
}


def _insert_sql(conn: psycopg.Connection[Any], table: str, fixed: dict[str, str]) -> str:
    """An INSERT into `table` giving every NOT NULL column without a default a value: `fixed` where given,
    else a random bigint or text (so unique constraints never collide), or a constant for a small column."""
    columns = conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s AND is_nullable = 'NO' "
        "AND column_default IS NULL ORDER BY ordinal_position",
        [table],
    ).fetchall()
    names, values = [], []
    for name, data_type in columns:
        names.append(name)
        if name in fixed:
            values.append(fixed[name])
        elif data_type in ("jsonb", "json"):
            values.append("""'{"n": 1}'""")
        elif data_type.startswith("timestamp"):
            values.append("now()")
        elif data_type == "boolean":
            values.append("false")
        elif data_type in ("text", "character varying"):
            values.append("'f' || :r")
        elif data_type == "bigint":
            values.append(":r")
        else:  # integer, smallint, numeric: never part of a unique key here
            values.append("1")
    return f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join(values)})"


def floor_statements(conn: psycopg.Connection[Any]) -> list[str]:
    """Create the scratch tables (once) and return the step transaction's statements, with `:r` for a random
    number (pgbench's variable syntax)."""
    for scratch, real in FLOOR_TABLES.items():
        conn.execute(f"DROP TABLE IF EXISTS {scratch}")
        conn.execute(f"CREATE TABLE {scratch} (LIKE {real} INCLUDING DEFAULTS INCLUDING INDEXES)")
    conn.execute(_insert_sql(conn, "floor_run", {"id": "1"}).replace(":r", "1"))
    for step in (1, 2):
        conn.execute(_insert_sql(conn, "floor_steprun", {"id": str(step)}).replace(":r", str(step)))
    return [
        "SELECT id, status FROM floor_run WHERE id = 1 FOR NO KEY UPDATE",
        "UPDATE floor_steprun SET state = 'succeeded', output = '{\"n\": 1}', finished_at = now(), "
        "lease_expires_at = NULL WHERE id = 1 AND fencing_token = fencing_token",
        _insert_sql(conn, "floor_stepresult", {"outcome": "'succeeded'"}),
        _insert_sql(conn, "floor_audit", {"verb": "'step.succeeded'", "data": """'{"n":1}'"""}),
        "UPDATE floor_steprun SET state = 'running', attempt = attempt + 1, fencing_token = fencing_token + 1, "
        "lease_owner = 'w', lease_expires_at = now() + interval '10 seconds', started_at = now() WHERE id = 2",
    ]


def pg_step_transaction_ms(svc: Services) -> tuple[float, str, float]:
    """The server floor of one step transaction (`pgbench -f` of the five statements in BEGIN/COMMIT, one
    client) and the Python floor (the same statements from psycopg, then one PUBLISH, in a loop)."""
    with psycopg.connect(svc.owner_url, autocommit=True) as conn:
        statements = floor_statements(conn)
        bindir = _server_bindir(conn)
        host, port, user, dbname = conn.info.host, conn.info.port, conn.info.user, conn.info.dbname
    server_ms, method = float("nan"), "pgbench not found"
    pgbench = bindir / "pgbench" if bindir and (bindir / "pgbench").is_file() else None
    if pgbench is not None:
        with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
            script.write("\\set r random(1, 4000000000000000000)\n")
            script.write("BEGIN;\n" + "".join(f"{statement};\n" for statement in statements) + "COMMIT;\n")
        argv = [str(pgbench), "-h", host, "-p", str(port), "-U", user, "-n", "-c", "1", "-T", "5"]
        out = subprocess.run([*argv, "-f", script.name, dbname], capture_output=True, text=True, check=False)
        Path(script.name).unlink()
        found = re.search(r"latency average = ([\d.]+) ms", out.stdout)
        if found:
            server_ms, method = float(found.group(1)), "pgbench -c1 -T5 -f <the five statements in one transaction>"
        else:
            method = f"pgbench failed: {(out.stderr or out.stdout)[-300:]}"
    publisher = redis.Redis.from_url(svc.redis_url)
    python_samples = []
    with psycopg.connect(svc.owner_url) as conn:
        for i in range(2000):
            started = time.perf_counter()
            with conn.transaction():
                for statement in statements:
                    conn.execute(statement.replace(":r", str(random.getrandbits(62))))
            publisher.publish("bench.floor", b"step done")
            python_samples.append(time.perf_counter() - started)
            if i == 0:
                python_samples.clear()  # the first round pays for connecting and planning
    return server_ms, method, median(python_samples) * 1000


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
    transaction_ms: float
    transaction_method: str
    python_step_ms: float
    event_ms: float

    @property
    def server_step_ms(self) -> float:
        """The server floor of one sequential step: its transaction, the broker's 2 Redis operations and one
        progress event (engine-performance §6: the target design's work with nothing in between)."""
        return self.transaction_ms + 2 * self.redis_ms + self.event_ms


def floor_measure(svc: Services) -> Floor:
    redis_ms, redis_method = redis_round_trip_ms(svc.redis_url)
    transaction_ms, transaction_method, python_ms = pg_step_transaction_ms(svc)
    return Floor(
        redis_ms, redis_method, transaction_ms, transaction_method, python_ms, layer_round_trip_ms(svc.redis_url)
    )


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
    with psycopg.connect(svc.owner_url, autocommit=True) as conn:
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


# A 40-step run's commits that are not a sequential step's: the run start's and the first step's claim (the
# first step is always reached through the broker).
RUN_OVERHEAD_COMMITS = 2


def run(svc: Services, *, b1_step_ms: float | None = None, product_commits: Commits | None = None) -> list[Goal]:
    """Floor probes; commits per step and the floor multiples come from B1 when it ran in this invocation."""
    from bench.common import table

    floor = floor_measure(svc)
    table(
        "B8 floors (this machine, this run)",
        ["probe", "ms", "method"],
        [
            ["Redis round trip", f"{floor.redis_ms:.3f}", floor.redis_method],
            ["step transaction (5 statements, 1 commit)", f"{floor.transaction_ms:.3f}", floor.transaction_method],
            ["Channels PubSub group_send -> receive", f"{floor.event_ms:.3f}", "median of 1000, one process"],
            ["server floor = transaction + 2 Redis + 1 event", f"{floor.server_step_ms:.3f}", "per sequential step"],
            [
                "Python floor = the 5 statements + COMMIT + PUBLISH",
                f"{floor.python_step_ms:.3f}",
                "psycopg, one connection, median of 2000",
            ],
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
    python_multiple = b1_step_ms / floor.python_step_ms
    server_multiple = b1_step_ms / floor.server_step_ms
    print(
        f"\nB1 per step {b1_step_ms:.2f} ms = {python_multiple:.1f}x the Python floor ({floor.python_step_ms:.3f} ms), "
        f"{server_multiple:.1f}x the server floor ({floor.server_step_ms:.3f} ms)"
    )
    # The goal figure is what sessions waited for: WAL flushes by client backends (pg_stat_io). The WAL
    # commit records minus outbox marks (table above) are the cross-check; they agree when nothing else runs.
    if product_commits.all_fsyncs == 0:
        print("fsync is off on this server: commits_per_step uses WAL commit records minus outbox marks instead")
        waited = product_commits.synchronous or 0
    else:
        waited = product_commits.client_fsyncs
    per_step = (waited - RUN_OVERHEAD_COMMITS) / STEPS
    print(
        f"synchronous commits: {waited} for one {STEPS}-step run = {RUN_OVERHEAD_COMMITS} (run start, first claim) "
        f"+ {per_step:.2f} per sequential step"
    )
    goals = [
        Goal("B8", "commits_per_step", per_step, "<=", 1.0),
        Goal("B8", "python_floor_multiple", python_multiple, "<=", 3),
        Goal("B8", "server_floor_multiple", server_multiple, "<=", 8),
    ]
    print_goals(goals)
    return goals
