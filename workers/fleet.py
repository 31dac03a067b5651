"""The worker fleet's shape, declared once: which processes run the product beside its services, and how big.

    engine worker       queues engine, default, connectors; a prefork pool of 2
    inference workers   AIOS_INFERENCE_WORKERS of them (default: one per core, at most 4), each on the inference
                        queue: a few Celery threads only ring the bell, and up to AIOS_INFERENCE_CONCURRENCY
                        steps (default 64) run as coroutines on the process's event loop
    beat                the one beat schedule (workers/celery.py)
    web                 the ASGI application (HTTP and WebSocket) under uvicorn

`python -m deploy.devstack run` starts exactly `fleet()`. The benchmarks, the tests and the fault harness build
their workers, beat and web servers from the same pieces, changing only what they name (another Celery app,
other sizes, a worker on every queue).

Nothing here imports Django or Celery: the stack's launcher, which must not load settings, reads it too.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

CELERY_APP = "workers.celery"
ENGINE_QUEUES = ("engine", "default", "connectors")
INFERENCE_QUEUES = ("inference",)
# Every queue the Celery app declares, for a single worker that serves them all (tests, one-process setups).
ALL_QUEUES = ("engine", "inference", "connectors", "default")
ENGINE_CONCURRENCY = 2

# What beat logs for each due task, and what a worker logs for each task it receives and finishes: true, but
# several lines every few seconds (the sweeper, the audit anchors). A console shows the rest; the log files keep
# everything.
# The one line per step execution (apps/core/telemetry/tracing.py) is routine in the same way.
ROUTINE_LINES = re.compile(
    r"Scheduler: Sending due task |\bTask \S+\[[0-9a-f-]+\] (?:received|succeeded in )|\bstep \S+ of run \d+ ran for "
)


class FleetError(ValueError):
    """A fleet setting in the environment is not a usable number."""


def _count(environ: Mapping[str, str], name: str, default: int, maximum: int) -> int:
    text = environ.get(name, "").strip() or str(default)
    if not text.isdigit() or not 1 <= int(text) <= maximum:
        raise FleetError(f"{name} must be a whole number from 1 to {maximum}, not {text!r}.")
    return int(text)


def inference_workers(environ: Mapping[str, str] | None = None) -> int:
    """Inference worker processes (AIOS_INFERENCE_WORKERS, default one per core, at most 4).

    A step's bookkeeping is Python under one GIL per process, and B6 showed a single process capping at well
    under one core with 64 LLM steps in flight.
    """
    return _count(os.environ if environ is None else environ, "AIOS_INFERENCE_WORKERS", min(os.cpu_count() or 1, 4), 32)


def inference_concurrency(environ: Mapping[str, str] | None = None) -> int:
    """LLM steps one inference worker process runs at once (AIOS_INFERENCE_CONCURRENCY, default 64).

    They are coroutines on the process's event loop (apps.runs.async_engine), not threads, so this bounds LLM
    steps in flight per process, not CPU use. Endpoints cap the rest.
    """
    return _count(os.environ if environ is None else environ, "AIOS_INFERENCE_CONCURRENCY", 64, 1024)


# Celery threads per inference worker: each only hands a step to the asynchronous executor and returns once it is
# claimed, so they sleep almost all the time; enough of them let a burst of steps be claimed in a few batched
# statements, and the executor's own limit holds the broker's backlog for other processes.
INFERENCE_DOORBELLS = 16


@dataclass(frozen=True)
class Worker:
    """One Celery worker process: the queues it consumes, its pool and the pool's size."""

    name: str  # in a console and as its log file's name
    node: str  # Celery's node name, before "@host"
    queues: tuple[str, ...]
    pool: str = "prefork"
    concurrency: int = ENGINE_CONCURRENCY

    def options(self, host: str = "%h") -> list[str]:
        """`celery worker`'s options for this shape."""
        options = ["-Q", ",".join(self.queues)]
        if self.pool != "prefork":
            options += ["-P", self.pool]
        return [*options, "-c", str(self.concurrency), "-n", f"{self.node}@{host}"]

    def argv(
        self,
        *,
        app: str = CELERY_APP,
        python: str = sys.executable,
        loglevel: str = "INFO",
        extra: Sequence[str] = (),
    ) -> list[str]:
        return [python, "-m", "celery", "-A", app, "worker", *self.options(), "--loglevel", loglevel, *extra]

    @property
    def ready_line(self) -> re.Pattern[str]:
        """The line it logs once it consumes from the broker (a worker serves no port to probe)."""
        return re.compile(rf"\b{re.escape(self.node)}@\S+ ready\.")


def workers(*, inference_workers: int, inference_concurrency: int) -> list[Worker]:
    """The fleet's Celery workers: the engine worker, then the inference workers."""
    engine = Worker("worker", "engine", ENGINE_QUEUES)
    inference = [
        Worker(
            "llm-worker" if index == 1 else f"llm-worker-{index}",
            f"inference{index}",
            INFERENCE_QUEUES,
            pool="threads",
            concurrency=min(INFERENCE_DOORBELLS, inference_concurrency),
        )
        for index in range(1, inference_workers + 1)
    ]
    return [engine, *inference]


def beat_argv(
    schedule: Path, *, app: str = CELERY_APP, python: str = sys.executable, loglevel: str = "INFO"
) -> list[str]:
    """Celery beat with its schedule's state in `schedule` (the schedule itself is the app's)."""
    return [python, "-m", "celery", "-A", app, "beat", "--schedule", str(schedule), "--loglevel", loglevel]


def web_argv(
    port: int, *, host: str = "127.0.0.1", python: str = sys.executable, log_level: str | None = None
) -> list[str]:
    """The ASGI application under uvicorn on `host:port` (no lifespan: the app has no start-up hooks)."""
    argv = [python, "-m", "uvicorn", "aios_web.asgi:application", "--host", host, "--port", str(port)]
    argv += ["--lifespan", "off"]
    # uvicorn trusts X-Forwarded-For from loopback by default, which would let any local client (or a proxy on the
    # same host that passes the header through) choose the address sign-in throttling counts. Proxy headers are
    # read only from the proxies FORWARDED_ALLOW_IPS names (deploy/README.md), never by default.
    forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "").strip()
    argv += ["--forwarded-allow-ips", forwarded_allow_ips] if forwarded_allow_ips else ["--no-proxy-headers"]
    if log_level is not None:
        argv += ["--log-level", log_level]
    return argv


@dataclass(frozen=True)
class FleetProcess:
    """One process of the fleet, ready to start: its name, command line, and how to tell it is up.

    Every process takes the environment of the stack it belongs to; nothing here varies by process.
    """

    name: str
    role: str  # "worker", "beat" or "web"
    argv: list[str]
    ready_line: re.Pattern[str] | None = None  # workers; the web server is probed on /healthz instead
    routine_lines: re.Pattern[str] | None = None


def fleet(
    *,
    web_port: int,
    beat_schedule: Path,
    environ: Mapping[str, str] | None = None,
    python: str = sys.executable,
) -> list[FleetProcess]:
    """Every process of the product besides its services, in start order: workers, beat, web.

    Sizes come from `environ` (default: this process's environment); FleetError names a malformed one.
    """
    environ = os.environ if environ is None else environ
    shape = workers(inference_workers=inference_workers(environ), inference_concurrency=inference_concurrency(environ))
    processes = [
        FleetProcess(worker.name, "worker", worker.argv(python=python), worker.ready_line, ROUTINE_LINES)
        for worker in shape
    ]
    processes.append(FleetProcess("beat", "beat", beat_argv(beat_schedule, python=python), None, ROUTINE_LINES))
    processes.append(FleetProcess("web", "web", web_argv(web_port, python=python)))
    return processes
