"""The fault harness: real worker, beat and Redis processes that a test can kill, and the checks that
every fault test runs afterwards (reference/reliability-anchors.md part B0).

Processes are the stack's own (deploy.devstack.processes.ManagedProcess), each in a session of its own, so a
whole Celery worker (master and pool children) dies with one `killpg(SIGKILL)`; workers and beat are shaped
like the fleet's (workers/fleet.py). Every test gets a private `redis-server` (no persistence),
so no worker of another test, and no session-wide worker of the rest of the suite, ever takes its tasks.

Sizes: `AIOS_FAULTS_SIZE=ci` (the default, what `make test` runs) or `extended` (`make faults SIZE=extended`).
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from deploy.devstack.processes import ManagedProcess
from deploy.devstack.services import redis_argv, redis_server_binary
from tests.support.processes import LOG_DIR, REPO, celery_worker_argv, free_port, service_env
from workers import fleet as fleet_shape

SIZE = os.environ.get("AIOS_FAULTS_SIZE", "ci").strip().lower() or "ci"
if SIZE not in ("ci", "extended"):
    raise RuntimeError(f"AIOS_FAULTS_SIZE must be ci or extended, not {SIZE!r}")

# The engine's timing in the fault tests: short, so a lost worker is noticed in seconds.
LEASE_SECONDS = 6
SWEEP_SECONDS = 1.0
# A sweeper killed mid-sweep holds the sweep duty this long (the production default: two sweep intervals).
SWEEP_LEASE_SECONDS = 2
BEAT_LEASE_SECONDS = 3.0
RELAY_AFTER_SECONDS = 1.0
REQUEUE_AFTER_SECONDS = 3.0
# Crash tests kill some steps several times in a row; the restart cap (and its incident) is not what they test.
RESTART_CAP = 25
FAULT_SEED = 20240917


def sized(ci: int, extended: int) -> int:
    """The CI size or the extended size of a test, whichever this session runs."""
    return ci if SIZE == "ci" else extended


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (`fraction` 0.95 for p95); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(math.ceil(fraction * len(ordered)), 1)
    return float(ordered[rank - 1])


def log_dir() -> Path:
    """reports/logs/faults/<test database>/: sessions on other test databases (other developers on the same
    checkout) write elsewhere, so a test never counts another session's kills in a log."""
    from django.db import connection

    path = LOG_DIR / "faults" / str(connection.settings_dict["NAME"])
    path.mkdir(parents=True, exist_ok=True)
    return path


SWEEP_QUEUE = "sweep"


def dedicated_sweep_queue() -> str | None:
    """ "sweep" when the app routes `runs.sweep` to a queue of that name: the convention for a sweeper that
    runs in a worker process of its own (which the harness then starts with beat, as a deployment would)."""
    from workers.celery import app

    route = (app.conf.task_routes or {}).get("runs.sweep", {})
    queue = route.get("queue") if isinstance(route, dict) else None
    return SWEEP_QUEUE if queue == SWEEP_QUEUE else None


def all_queues() -> str:
    """Every queue the Celery app declares (steps' queues and the sweeper's), for workers that serve all."""
    from workers.celery import app

    return ",".join(queue.name for queue in app.conf.task_queues)


# --- processes ------------------------------------------------------------------------------------------------


class ServiceProcess(ManagedProcess):
    """One child process of a fault test, with its output in reports/logs/faults/<test database>/<name>.log."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], *, cwd: Path = REPO, die_with_parent: bool = True
    ) -> None:
        super().__init__(
            name, argv, env=env, cwd=cwd, log_path=log_dir() / f"{name}.log", die_with_parent=die_with_parent
        )
        self.killed = False  # by the test, on purpose

    def start(self, ready: Callable[[str], bool] | None = None, timeout: float = 60) -> ServiceProcess:
        """Start it; with `ready`, wait until `ready(log text)` is true."""
        super().start()
        if ready is not None:
            self.wait_ready(ready, timeout)
        return self

    def wait_ready(self, ready: Callable[[str], bool], timeout: float = 60) -> ServiceProcess:
        self.wait_until(ready, timeout)
        return self

    def children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def kill_group(self) -> None:
        """SIGKILL the whole process group (no clean-up, no warm shutdown) and wait until it is gone."""
        if self.popen is None:
            return
        self.killed = True
        self.kill()

    def stop(self, timeout: float = 5, hurry: Callable[[], bool] = lambda: False) -> None:
        self.signal_group(signal.SIGCONT)  # a test may have stopped it; SIGTERM must reach a running process
        super().stop(timeout, hurry)


class RedisServer:
    """A private, memory-only redis-server (no RDB, no AOF) on a free loopback port."""

    def __init__(self, name: str, workdir: Path, port: int | None = None, also_bind: Sequence[str] = ()) -> None:
        self.name = name
        # Addresses besides loopback it listens on (the scale-out test's hosts reach it through their links).
        self.also_bind = list(also_bind)
        self.port = port or free_port()
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process: ServiceProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        argv = redis_argv(redis_server_binary(), self.port, self.workdir, loglevel="warning")
        if self.also_bind:
            # redis-server joins the words after an option into its value: `--bind 127.0.0.1 10.0.0.1`.
            at = argv.index("--bind") + 2
            argv[at:at] = self.also_bind
        self.process = ServiceProcess(self.name, argv, dict(os.environ)).start()
        deadline = time.monotonic() + 20
        while not self.ping():
            if not self.process.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on {self.port} did not start:\n{self.process.log_text()[-2000:]}")
            time.sleep(0.05)
        return self

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def client(self) -> Any:
        import redis

        return redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=2)

    def kill(self) -> None:
        """SIGKILL: whatever it held in memory is gone."""
        assert self.process is not None
        self.process.kill_group()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


def engine_env(redis_url: str, **extra: str) -> dict[str, str]:
    """The environment of the fault tests' workers and beat: the test database, a private Redis, the
    sink allowlisted, and short engine timings. Needs database access (it reads the test DB's name)."""
    env = service_env(
        REDIS_URL=redis_url,
        CELERY_BROKER_URL=redis_url,
        AIOS_HTTP_ALLOWLIST="127.0.0.1/32",
        AIOS_STEP_LEASE_SECONDS=str(LEASE_SECONDS),
        # An eager claim left by a worker that died right after its commit lapses as soon as an unsent outbox
        # row would be relayed, so D5's bound holds for both ways a step is handed on.
        AIOS_EAGER_LEASE_SECONDS=str(max(1, round(RELAY_AFTER_SECONDS))),
        AIOS_SWEEP_INTERVAL_SECONDS=str(SWEEP_SECONDS),
        AIOS_SWEEP_LEASE_SECONDS=str(SWEEP_LEASE_SECONDS),
        # A beat killed by a test leaves its lease behind (workers/beat.py): the next one takes over in seconds.
        AIOS_BEAT_LEASE_SECONDS=str(BEAT_LEASE_SECONDS),
        AIOS_OUTBOX_RELAY_AFTER_SECONDS=str(RELAY_AFTER_SECONDS),
        AIOS_REQUEUE_AFTER_SECONDS=str(REQUEUE_AFTER_SECONDS),
        AIOS_STEP_RESTART_CAP=str(RESTART_CAP),
        AIOS_FAULTS="",
        AIOS_FAULTS_SEED=str(FAULT_SEED),
    )
    env.update(extra)
    return env


WORKER_READY = " ready."
BEAT_READY = "beat: Starting"


@dataclass
class Fleet:
    """The Celery workers and the beat of one test; everything is stopped when the test ends.

    `worker()` and `beat()` wait until the process is ready; with `wait=False` they return at once, and
    `ready()` waits for all of them (starting several processes in parallel saves seconds per test).
    """

    name: str
    env: dict[str, str]
    processes: list[ServiceProcess] = field(default_factory=list)
    _count: int = 0
    _starting: list[tuple[ServiceProcess, str]] = field(default_factory=list)

    def worker(
        self,
        *,
        concurrency: int = 2,
        queues: str = "",
        wait: bool = True,
        prefix: Sequence[str] = (),
        **env: str,
    ) -> ServiceProcess:
        """Start a worker (prefork, `concurrency` children) on `queues` (default: every queue the app declares).
        `env` overrides apply to it only (AIOS_FAULTS); `prefix` goes before its command line (`ip netns exec`)."""
        self._count += 1
        label = f"{self.name}-worker{self._count}"
        argv = [*prefix, *celery_worker_argv(queues or all_queues(), concurrency, node=f"{label}-{os.getpid()}")]
        return self._start(ServiceProcess(label, argv, {**self.env, **env}), WORKER_READY, wait)

    def beat(self, *, wait: bool = True, **env: str) -> ServiceProcess:
        """Start Celery beat, whose schedule sends the sweeper every AIOS_SWEEP_INTERVAL_SECONDS. When the
        app routes the sweep to the "sweep" queue, a one-process worker for that queue starts with it."""
        self._count += 1
        label = f"{self.name}-beat{self._count}"
        for stale in log_dir().glob(f"{label}-schedule*"):
            stale.unlink()
        argv = fleet_shape.beat_argv(log_dir() / f"{label}-schedule")
        beat = self._start(ServiceProcess(label, argv, {**self.env, **env}), BEAT_READY, wait)
        queue = dedicated_sweep_queue()
        if queue:
            sweeper = celery_worker_argv(queue, 1, node=f"{label}-sweeper-{os.getpid()}")
            self._start(ServiceProcess(f"{label}-sweeper", sweeper, {**self.env, **env}), WORKER_READY, wait)
        return beat

    def supervise(self) -> Supervisor:
        """Restart any worker that exits on its own, as systemd or Kubernetes would (see Supervisor)."""
        supervisor = Supervisor(self)
        supervisor.start()
        return supervisor

    def kill_all(self) -> None:
        """SIGKILL every worker, sweeper and beat started so far (a total outage)."""
        for process in self.processes:
            process.kill_group()

    def _start(self, process: ServiceProcess, marker: str, wait: bool) -> ServiceProcess:
        self.processes.append(process)
        process.start()
        self._starting.append((process, marker))
        if wait:
            self.ready()
        return process

    def ready(self, timeout: float = 60) -> None:
        """Wait until every process started so far is ready."""
        for process, marker in self._starting:
            process.wait_ready(lambda log, marker=marker: marker in log, timeout)  # type: ignore[misc]
        self._starting.clear()

    def kills_observed(self) -> int:
        """Pool children that died by SIGKILL, as the workers' masters logged them (a crash point fired)."""
        return sum(
            process.log_text().count("exited with 'signal 9 (SIGKILL)'")
            for process in self.processes
            if "-worker" in process.name
        )

    def kill_loop(self, limit: int) -> Callable[[], str | None]:
        """A `give_up` check for crash tests: more than `limit` pool children killed means they are dying in a
        loop (see test_crash_points.py) rather than making progress."""

        def check() -> str | None:
            kills = self.kills_observed()
            if kills <= limit:
                return None
            return (
                f"{kills} pool children killed (limit {limit}): the children are dying in a loop, most likely "
                "all replaying one crash-point sequence (see tests/faults/test_crash_points.py)"
            )

        return check

    def task_seconds(self) -> list[float]:
        """How long each task that returned normally ran, from the workers' logs."""
        found = []
        for process in self.processes:
            if "-worker" in process.name:
                found += [float(s) for s in re.findall(r"\] succeeded in ([0-9.]+)s", process.log_text())]
        return found

    def close(self) -> None:
        """SIGKILL everything: a warm shutdown only costs time here, and the private Redis is thrown away."""
        for process in reversed(self.processes):
            process.kill_group()


class Supervisor(threading.Thread):
    """Restarts workers that exit without the test having killed them, like a process supervisor in a
    deployment, and records each exit for the figures (`crashes`: the worker's name and its "Unrecoverable
    error" line, or its exit code)."""

    def __init__(self, fleet: Fleet) -> None:
        super().__init__(name="supervisor", daemon=True)
        self.fleet = fleet
        self.crashes: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(0.2):
            for process in list(self.fleet.processes):
                code = process.exit_code()
                if "-worker" not in process.name or code is None or process.killed:
                    continue
                process.killed = True  # handled: replaced below
                reason = next(
                    (line for line in process.log_text().splitlines() if "Unrecoverable error" in line),
                    f"exit code {code}",
                )
                process.reap()
                self.crashes.append(f"{process.name}: {reason.strip()[:200]}")
                # Started from this thread, which ends before the test does: a parent-death signal tied to it
                # would stop the replacement with it. Fleet.close() stops it instead.
                replacement = ServiceProcess(
                    f"{process.name}-restart{len(self.crashes)}", process.argv, process.env, die_with_parent=False
                )
                replacement.start()
                self.fleet.processes.append(replacement)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


# --- waiting, with messages that say what is stuck ---------------------------------------------------------------


def describe_runs(run_ids: Iterable[int]) -> str:
    """One line per run: its status and every step's state (attempt, restarts, what it waits for)."""
    from apps.runs.models import Run, StepRun

    lines = []
    runs = {run.pk: run for run in Run.objects.filter(pk__in=list(run_ids))}
    steps: dict[int, list[StepRun]] = {}
    for step in StepRun.objects.filter(run_id__in=list(runs)).order_by("run_id", "position"):
        steps.setdefault(step.run_id, []).append(step)
    for run_id, run in sorted(runs.items()):
        parts = []
        for step in steps.get(run_id, []):
            detail = f"{step.step_key}={step.state}"
            extras = [f"attempt {step.attempt}"]
            if step.restarts:
                extras.append(f"restarts {step.restarts}")
            if step.waiting_for:
                extras.append(f"for {step.waiting_for}")
            if step.state == "running" and step.lease_expires_at:
                extras.append(f"lease {step.lease_expires_at:%H:%M:%S.%f}"[:-3])
            if step.state == "queued" and step.queued_at:
                extras.append(f"queued {step.queued_at:%H:%M:%S}")
            parts.append(f"{detail}({', '.join(extras)})")
        lines.append(
            f"  run {run_id} {run.status}: " + " ".join(parts) + (f" error={run.error[:120]!r}" if run.error else "")
        )
    return "\n".join(lines)


def wait_until(
    condition: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    detail: Callable[[], str] = lambda: "",
    poll: float = 0.1,
    give_up: Callable[[], str | None] = lambda: None,
) -> float:
    """Poll `condition` until true; returns the seconds it took. On timeout, or as soon as `give_up()` names
    a reason, fails naming `what` and `detail()`."""
    started = time.monotonic()
    while not condition():
        reason = give_up()
        if reason:
            raise AssertionError(f"gave up waiting for {what}: {reason}\n{detail()}")
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{detail()}")
        time.sleep(poll)
    return time.monotonic() - started


def wait_runs(
    run_ids: Sequence[int],
    *,
    timeout: float,
    states: Sequence[str] = ("succeeded", "failed", "cancelled"),
    give_up: Callable[[], str | None] = lambda: None,
) -> float:
    """Wait until every run is in one of `states`; fails naming the stuck runs and their steps' states."""
    from apps.runs.models import Run

    wanted = list(run_ids)

    def done() -> bool:
        return Run.objects.filter(pk__in=wanted, status__in=list(states)).count() == len(wanted)

    def stuck() -> str:
        pending = list(Run.objects.filter(pk__in=wanted).exclude(status__in=list(states)).values_list("pk", flat=True))
        return f"{len(pending)} of {len(wanted)} runs not {'/'.join(states)}:\n" + describe_runs(pending[:30])

    return wait_until(
        done,
        timeout=timeout,
        what=f"{len(wanted)} runs to be {'/'.join(states)}",
        detail=stuck,
        poll=0.2,
        give_up=give_up,
    )


# --- invariants (part B0) --------------------------------------------------------------------------------------


@dataclass
class Invariants:
    """What the B0 checks found; `problems` is empty when I1-I5 held."""

    runs: int
    succeeded: int
    duplicate_results: int
    results_missing: int
    order_violations: int
    audit_problems: list[str]
    problems: list[str]


def check_invariants(run_ids: Sequence[int], *, expect: str = "succeeded") -> Invariants:
    """I1 every run reached `expect`; I2 one StepResult per finished step and none twice; I4 no step
    started before its predecessors' results committed; I5 the audit trail verifies, each run's audit stream
    is numbered 1..n with no gap and holds every event about the run, and each transition has exactly one
    audit row. (I3, effects once, is the sink's: see Sink.duplicate_effects.)"""
    from django.db.models import Count, Max, Min, Value
    from django.db.models.functions import Concat

    from apps.audit.models import AuditEvent
    from apps.audit.selectors import audit_verify
    from apps.runs.models import Run, StepResult, StepRun
    from apps.workflows.graph import Graph

    problems: list[str] = []
    runs = list(Run.objects.filter(pk__in=list(run_ids)).select_related("version"))
    not_done = [run.pk for run in runs if run.status != expect]
    if not_done:
        problems.append(f"I1: {len(not_done)} runs are not {expect}: {not_done[:20]}")
    duplicates = (
        StepResult.objects.filter(run_id__in=list(run_ids))
        .values("run_id", "step_key")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
        .count()
    )
    if duplicates:
        problems.append(f"I2: {duplicates} (run, step) pairs have more than one StepResult")
    results = {(r.run_id, r.step_key): r for r in StepResult.objects.filter(run_id__in=list(run_ids))}
    finished = StepRun.objects.filter(run_id__in=list(run_ids), state__in=["succeeded", "failed", "skipped"])
    missing = [(s.run_id, s.step_key) for s in finished if (s.run_id, s.step_key) not in results]
    if missing:
        problems.append(f"I2: {len(missing)} finished steps have no StepResult: {missing[:10]}")
    steps = {(s.run_id, s.step_key): s for s in StepRun.objects.filter(run_id__in=list(run_ids))}
    order_violations = 0
    for run in runs:
        graph = Graph.parse(run.version.graph)
        for key in graph.keys:
            step = steps.get((run.pk, key))
            if step is None or step.started_at is None or step.reused_from_id:
                continue
            for edge in graph.incoming[key]:
                before = results.get((run.pk, edge.source))
                if before is None or before.created_at > step.started_at:
                    order_violations += 1
                    problems.append(
                        f"I4: run {run.pk} step {key} started {step.started_at} before {edge.source}'s result "
                        f"({before.created_at if before else 'none'})"
                    )
    audit_problems: list[str] = []
    report = audit_verify()
    audit_problems += [f"trail broken: {problem}" for problem in report.problems]
    # Per-run streams: the verifier already refuses gaps; this also catches a run whose events went to
    # another stream (no gap there, but the run's story would be split) or were never written at all.
    streams = {
        stream: (count, low, high)
        for stream, count, low, high in AuditEvent.objects.filter(stream__in=[f"run:{pk}" for pk in run_ids])
        .order_by()
        .values("stream")
        .annotate(n=Count("id"), low=Min("stream_seq"), high=Max("stream_seq"))
        .values_list("stream", "n", "low", "high")
    }
    for run in runs:
        count, low, high = streams.get(f"run:{run.pk}", (0, None, None))
        if count == 0 or (low, high) != (1, count):
            audit_problems.append(f"run {run.pk}: stream run:{run.pk} holds {count} events numbered {low}..{high}")
    strays = (
        AuditEvent.objects.filter(target_type="runs.run", target_id__in=[str(pk) for pk in run_ids])
        .exclude(stream=Concat(Value("run:"), "target_id"))
        .count()
    )
    if strays:
        audit_problems.append(f"{strays} events about these runs are outside the runs' streams")
    verbs = AuditEvent.objects.filter(target_type="runs.run", target_id__in=[str(pk) for pk in run_ids]).values_list(
        "target_id", "verb", "data"
    )
    succeeded_events: dict[tuple[str, str], int] = {}
    finishes: dict[str, int] = {}
    for target_id, verb, data in verbs:
        if verb == "step.succeeded":
            step_key = json.loads(data).get("step", "")
            succeeded_events[(target_id, step_key)] = succeeded_events.get((target_id, step_key), 0) + 1
        if verb in ("run.succeeded", "run.failed", "run.cancelled"):
            finishes[target_id] = finishes.get(target_id, 0) + 1
    for (run_id, key), step in steps.items():
        if step.state == "succeeded" and not step.reused_from_id:
            count = succeeded_events.get((str(run_id), key), 0)
            if count != 1:
                audit_problems.append(f"run {run_id} step {key}: {count} step.succeeded audit rows (want 1)")
    for run in runs:
        if run.is_finished and finishes.get(str(run.pk), 0) != 1:
            audit_problems.append(f"run {run.pk}: {finishes.get(str(run.pk), 0)} run-finished audit rows (want 1)")
    problems += [f"I5: {problem}" for problem in audit_problems[:20]]
    return Invariants(
        runs=len(runs),
        succeeded=sum(run.status == "succeeded" for run in runs),
        duplicate_results=duplicates,
        results_missing=len(missing),
        order_violations=order_violations,
        audit_problems=audit_problems,
        problems=problems,
    )


# --- the test process's own Celery producer ------------------------------------------------------------------


class BrokerRedirect:
    """Points the test process's Celery app (which relays outbox rows when a test starts a run) at a
    private Redis for the duration of a test, and back afterwards."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._previous: str | None = None

    def _reset_pools(self) -> None:
        from kombu import pools

        from workers.celery import app

        if app._pool is not None:
            app._pool.force_close_all()
        app._pool = None
        amqp = app.__dict__.get("amqp")
        if amqp is not None:
            amqp._producer_pool = None
        # kombu keeps producer pools in a process-wide registry too; a stale one keeps sending to the
        # private Redis after the test (and it is gone by then).
        pools.reset()

    def __enter__(self) -> BrokerRedirect:
        from workers.celery import app

        self._previous = app.conf.broker_url
        self._reset_pools()
        app.conf.broker_url = self.url
        return self

    def __exit__(self, *exc: object) -> None:
        from workers.celery import app

        self._reset_pools()
        app.conf.broker_url = self._previous


def timeline(run_id: int, since: Any = None) -> str:
    """The run's audit events, one per line with seconds relative to `since` (for failure messages)."""
    from apps.audit.models import AuditEvent

    events = AuditEvent.objects.filter(stream=f"run:{run_id}").order_by("stream_seq")
    lines = []
    for event in events:
        at = (event.created_at - since).total_seconds() if since is not None else 0.0
        step = json.loads(event.data).get("step", "")
        lines.append(f"    {at:+7.2f}s {event.verb} {step}")
    return f"  run {run_id}:\n" + "\n".join(lines)
