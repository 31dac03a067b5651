"""The services and processes a benchmark run owns: the embedded stack, the bench database, Celery workers.

By default the stack is `python -m deploy.devstack services` on a data directory and ports of its own, so PostgreSQL
runs with its durable defaults (fsync, synchronous_commit and full_page_writes on). `make test`'s stack turns
all three off, which would flatter every commit the engine makes. When DATABASE_URL and REDIS_URL are already
set (for instance under `python -m deploy.devstack test -- python -m bench`), those services are used instead and
the settings in force are printed, so a reader always sees which kind of commit was measured.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

from deploy.devstack.config import mark_data_dir
from deploy.devstack.processes import ManagedProcess, ServiceFailed
from workers import fleet

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DATABASE = "aios_bench"
# Ports of their own, so a bench never collides with `make run` (55432/56379/58080) or `make test` (554xx).
STACK_PORTS = {
    "AIOS_PG_PORT": "25452",
    "AIOS_REDIS_PORT": "26399",
    "AIOS_INFERENCE_PORT": "28100",
    "AIOS_SMTP_PORT": "28035",
}
STACK_READY_SECONDS = 240.0
WORKER_READY_SECONDS = 60.0


@dataclass(frozen=True)
class Services:
    """Where the services are, and how PostgreSQL is configured (shown with every result)."""

    database_url: str  # the bench database, as the application's role (what the product's processes use)
    owner_url: str  # the bench database as its owner: migrations, the bench's own tables, server statistics
    admin_url: str  # the maintenance database on the same server, for CREATE/DROP DATABASE
    redis_url: str
    launched: bool  # True when this run started its own stack
    # What the launched stack's banner exports besides the URLs: AIOS_ENV and its generated key files.
    stack_env: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        """The environment for every Django process of the bench (this one, migrate, the workers)."""
        env = dict(os.environ)
        # The settings default to production; the bench is a development tool on a development stack (with
        # caller-given services too, where the settings then make a key file per machine).
        env.setdefault("AIOS_ENV", "development")
        # B3 starts thousands of runs through the API as one person: the per-person limits on run starts and API
        # calls (apps.core.throttling) would refuse most of them, and it measures the engine, not the limits.
        env.setdefault("AIOS_RUN_STARTS_PER_MINUTE", "0")
        env.setdefault("AIOS_API_REQUESTS_PER_MINUTE", "1000000")
        env.update(self.stack_env)
        env.update(
            DATABASE_URL=self.database_url,
            DATABASE_OWNER_URL=self.owner_url,
            REDIS_URL=self.redis_url,
            DJANGO_SETTINGS_MODULE="aios_web.settings",
            # DEBUG keeps every SQL statement in memory (connection.queries): a production worker has it off.
            DJANGO_DEBUG="false",
            AIOS_LOG_LEVEL="WARNING",
            PYTHONUNBUFFERED="1",
        )
        return env


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


class _Launcher:
    """`python -m deploy.devstack services` as a child process; its banner says when the services are up."""

    def __init__(self) -> None:
        data_dir = REPO_ROOT / ".data" / "bench"
        self._mark_parent(data_dir.parent)
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "AIOS_INFERENCE_URL")}
        env.update(STACK_PORTS)
        env["AIOS_DATA_DIR"] = str(data_dir)
        self.lines: deque[str] = deque(maxlen=200)
        self.exports: dict[str, str] = {}
        self.ready = threading.Event()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "deploy.devstack", "services"],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,  # our Ctrl-C is forwarded explicitly, after the workers have stopped
        )
        threading.Thread(target=self._pump, daemon=True).start()

    @staticmethod
    def _mark_parent(base: Path) -> None:
        # `make clean-data` deletes .data only when devstack's marker is there; a bench on a fresh clone is
        # the first to create .data, so it leaves the same marker devstack would.
        if not base.exists():
            base.mkdir(parents=True)
            mark_data_dir(base)

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip())
            found = re.search(r"export (\w+)=(\S+)", line)
            if found:
                self.exports[found.group(1)] = found.group(2).strip("'")  # shlex-quoted in the banner
            if "Ctrl-C stops everything" in line:
                self.ready.set()

    def wait(self) -> None:
        deadline = time.monotonic() + STACK_READY_SECONDS
        while not self.ready.wait(0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = "\n".join(self.lines)
                raise RuntimeError(f"python -m deploy.devstack services did not come up:\n{tail}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # devstack's orderly stop (PostgreSQL fast shutdown)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextmanager
def services() -> Iterator[Services]:
    """Yield running services: the caller's (DATABASE_URL and REDIS_URL set) or a stack started here."""
    if os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL"):
        url = os.environ["DATABASE_URL"]
        owner = os.environ.get("DATABASE_OWNER_URL") or url
        yield Services(
            database_url=_with_database(url, BENCH_DATABASE),
            owner_url=_with_database(owner, BENCH_DATABASE),
            admin_url=_with_database(owner, "postgres"),
            redis_url=os.environ["REDIS_URL"],
            launched=False,
        )
        return
    print("Starting the bench stack (python -m deploy.devstack services on .data/bench) ...", flush=True)
    launcher = _Launcher()
    try:
        launcher.wait()
        url = launcher.exports["DATABASE_URL"]
        owner = launcher.exports.get("DATABASE_OWNER_URL", url)
        yield Services(
            database_url=_with_database(url, BENCH_DATABASE),
            owner_url=_with_database(owner, BENCH_DATABASE),
            admin_url=_with_database(owner, "postgres"),
            redis_url=launcher.exports["REDIS_URL"],
            launched=True,
            stack_env={
                name: launcher.exports[name]
                for name in ("AIOS_ENV", "DJANGO_SECRET_KEY_FILE", "AIOS_CREDENTIALS_KEY_FILE")
                if name in launcher.exports
            },
        )
    finally:
        launcher.stop()


def database_recreate(svc: Services) -> None:
    """Drop and create the bench database, then migrate it (every run starts from an empty schema)."""
    with psycopg.connect(svc.admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DATABASE} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {BENCH_DATABASE}")
    print(f"Migrating the {BENCH_DATABASE} database ...", flush=True)
    result = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"],  # manage.py runs migrate as DATABASE_OWNER_URL
        cwd=REPO_ROOT,
        env=svc.env(),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"migrate failed:\n{result.stdout}\n{result.stderr}")


def postgres_settings(svc: Services) -> dict[str, str]:
    """The durability settings in force for the bench database's sessions."""
    names = ("server_version", "fsync", "synchronous_commit", "full_page_writes", "wal_sync_method", "shared_buffers")
    with psycopg.connect(svc.database_url, autocommit=True) as conn:
        return {name: str(conn.execute(f"SHOW {name}").fetchone()[0]) for name in names}  # type: ignore[index]


# Celery workers --------------------------------------------------------------------------------------------

# The fleet's workers (workers/fleet.py) under the bench's Celery app, as `celery worker` options. B1/B2: one
# prefork worker on every queue. B3: the engine worker and one inference worker. B6: what `python -m
# deploy.devstack run` starts on this 2-core machine: the engine worker and one inference worker per core
# (AIOS_INFERENCE_WORKERS), each running up to AIOS_INFERENCE_CONCURRENCY (64) steps on its event loop.
ALL_QUEUES_WORKER = tuple(fleet.Worker("bench-all", "bench-all", fleet.ALL_QUEUES).options())
DEFAULT_DEPLOYMENT = tuple(
    tuple(worker.options()) for worker in fleet.workers(inference_workers=1, inference_concurrency=64)
)
LLM_DEPLOYMENT = tuple(
    tuple(worker.options()) for worker in fleet.workers(inference_workers=2, inference_concurrency=64)
)


class Worker:
    """A Celery worker process on `bench.worker` (the product's app plus the peer tasks and bench steps)."""

    def __init__(
        self, svc: Services, args: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.log_path = log_path
        argv = [sys.executable, "-m", "celery", "-A", "bench.worker", "worker", *args, "--loglevel", "INFO"]
        self.process = ManagedProcess(
            log_path.stem, argv, env={**svc.env(), **(env or {})}, cwd=REPO_ROOT, log_path=log_path
        ).start()

    def wait_ready(self) -> None:
        try:
            self.process.wait_until(lambda text: " ready." in text, WORKER_READY_SECONDS)
        except ServiceFailed as exc:
            raise RuntimeError(f"Celery worker did not start: {exc}") from None

    def stop(self) -> None:
        # A warm shutdown of the worker and its pool; what is left of its process group after 20 s is killed.
        self.process.stop(timeout=20)


@contextmanager
def workers(
    svc: Services, specs: Sequence[Sequence[str]], name: str, env: Mapping[str, str] | None = None
) -> Iterator[list[Worker]]:
    """Start the given workers (`env` added to their environment), wait until each consumes, stop them all
    afterwards."""
    logs = REPO_ROOT / ".data" / "bench" / "logs"
    started: list[Worker] = []
    try:
        for index, spec in enumerate(specs):
            started.append(Worker(svc, spec, logs / f"{name}-worker{index}.log", env))
        for worker in started:
            worker.wait_ready()
        yield started
    finally:
        for worker in started:
            worker.stop()
