"""The production image's one entrypoint: the command names the process's role.

    web [--port N]           the ASGI application (HTTP and WebSocket) under uvicorn on 0.0.0.0:AIOS_WEB_PORT
    websocket [--port N]     the same server; a separate name so a proxy can send /ws/ to its own replicas
    worker QUEUE[,QUEUE]     a Celery worker on those queues, with the pool workers/fleet.py gives them
    beat                     the one Celery beat (run exactly one)
    migrate                  `manage.py migrate` as the owner role (DATABASE_OWNER_URL)
    purge-runs ARGS...       `manage.py purge_runs ARGS` (e.g. --older-than 365) as the owner role: the retention
                             job, run on a schedule (deploy/README.md, "Retention of runs and recordings")
    check                    `manage.py check --deploy --fail-level WARNING`
    worker-health [ARGS]     `manage.py worker_health` (a worker container's probe)
    probe [PATH]             GET http://127.0.0.1:AIOS_WEB_PORT/PATH (default healthz) with an allowed Host
                             header; exit 0 on 200 (the web container's probe: the image has no curl)
    manage ARGS...           any other `manage.py` command (createsuperuser, verify_audit, ...)

Every role replaces this process (exec), so the orchestrator's signals reach uvicorn or Celery directly and a
warm stop works as workers/fleet.py and the settings describe. A mistake in the command or in a variable this
module reads ends the process with exit 2 and one line naming what to change.

Nothing here imports Django: the settings load in the process that the role execs.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from workers import fleet

APP_DIR = Path(__file__).resolve().parents[2]
MANAGE = str(APP_DIR / "manage.py")
QUEUES = fleet.ALL_QUEUES
# Beat keeps its schedule's state (last run times) in AIOS_DATA_DIR, a writable volume, since the root filesystem
# may be read-only. Losing it only means every periodic task runs once at start.
DEFAULT_DATA_DIR = "/var/lib/aios"


class UsageError(Exception):
    """A role, an argument or a variable is wrong; the message is the one line the operator sees."""


def _port(environ: Mapping[str, str], arguments: Sequence[str]) -> int:
    text = environ.get("AIOS_WEB_PORT", "").strip() or "8000"
    if len(arguments) == 2 and arguments[0] == "--port":
        text = arguments[1]
    elif arguments:
        raise UsageError(f"web takes only --port N, not {' '.join(arguments)!r}.")
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise UsageError(f"AIOS_WEB_PORT (or --port) must be a port number from 1 to 65535, not {text!r}.")
    return int(text)


def forwarded_allow_ips(environ: Mapping[str, str]) -> str:
    """The addresses whose X-Forwarded-For and X-Forwarded-Proto uvicorn believes: the reverse proxy's.

    Stated explicitly rather than left to uvicorn's own reading of the variable, so a reader of this module
    knows the rule: loopback only unless FORWARDED_ALLOW_IPS lists the proxy's addresses or networks. "*" would
    let any client choose the address that sign-in throttling keys on, so it is refused.
    """
    value = environ.get("FORWARDED_ALLOW_IPS", "").strip() or "127.0.0.1"
    entries = [entry.strip() for entry in value.split(",") if entry.strip()]
    if "*" in entries:
        raise UsageError(
            "FORWARDED_ALLOW_IPS must list the reverse proxy's addresses or networks (e.g. 10.0.0.0/8), not '*': "
            "with '*' every client chooses its own address."
        )
    return ",".join(entries)


def web_argv(environ: Mapping[str, str], arguments: Sequence[str]) -> list[str]:
    """uvicorn on every interface, trusting forwarded headers only from FORWARDED_ALLOW_IPS."""
    argv = fleet.web_argv(_port(environ, arguments), host="0.0.0.0", python=sys.executable)  # noqa: S104
    argv += ["--proxy-headers", "--forwarded-allow-ips", forwarded_allow_ips(environ), "--no-server-header"]
    # Less than the orchestrators' default grace (30 s) so open requests finish before a SIGKILL.
    argv += ["--timeout-graceful-shutdown", "20"]
    return argv


def worker_shape(queues_text: str, environ: Mapping[str, str]) -> fleet.Worker:
    """The worker for a comma-separated list of queues, shaped as workers/fleet.py shapes the fleet's.

    The inference queue gets a worker of its own (a thread pool that hands steps to the asynchronous executor);
    the others share a prefork pool of AIOS_WORKER_CONCURRENCY processes (default fleet.ENGINE_CONCURRENCY).
    """
    queues = tuple(dict.fromkeys(q.strip() for q in queues_text.split(",") if q.strip()))
    unknown = [q for q in queues if q not in QUEUES]
    if not queues or unknown:
        raise UsageError(f"worker takes one or more of {','.join(QUEUES)} (comma-separated), not {queues_text!r}.")
    node = "-".join(queues)
    if "inference" in queues:
        if len(queues) > 1:
            raise UsageError(
                "worker: the inference queue needs a worker of its own (its pool is threads, the others prefork); "
                "start one worker for inference and another for the rest."
            )
        try:
            concurrency = fleet.inference_concurrency(environ)
        except fleet.FleetError as error:
            raise UsageError(str(error)) from error
        return fleet.Worker(node, node, queues, pool="threads", concurrency=min(fleet.INFERENCE_DOORBELLS, concurrency))
    text = environ.get("AIOS_WORKER_CONCURRENCY", "").strip() or str(fleet.ENGINE_CONCURRENCY)
    if not text.isdigit() or not 1 <= int(text) <= 256:
        raise UsageError(f"AIOS_WORKER_CONCURRENCY must be a whole number from 1 to 256, not {text!r}.")
    return fleet.Worker(node, node, queues, concurrency=int(text))


def data_dir(environ: Mapping[str, str]) -> Path:
    return Path(environ.get("AIOS_DATA_DIR", "").strip() or DEFAULT_DATA_DIR)


def probe(environ: Mapping[str, str], arguments: Sequence[str]) -> int:
    """GET the web server's `path` on loopback as a client of an allowed host would; 0 when it answers 200.

    The Host header is the first of DJANGO_ALLOWED_HOSTS (a leading dot, a domain wildcard, dropped), since
    Django answers 400 to any other.
    """
    path = (arguments[0] if arguments else "healthz").lstrip("/")
    hosts = [h.strip() for h in environ.get("DJANGO_ALLOWED_HOSTS", "").split(",") if h.strip() and h.strip() != "*"]
    host = hosts[0].lstrip(".") if hosts else "localhost"
    url = f"http://127.0.0.1:{_port(environ, [])}/{path}"
    request = urllib.request.Request(url, headers={"Host": host})  # noqa: S310 (a fixed http URL on loopback)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            status = int(response.status)
    except urllib.error.HTTPError as error:
        status = error.code
    except OSError as error:
        print(f"probe {url}: {error}", file=sys.stderr)
        return 1
    print(f"probe {url}: {status}")
    return 0 if status == 200 else 1


def command(role: str, arguments: Sequence[str], environ: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """The command line and the environment changes for `role`; UsageError names what is wrong."""
    python = sys.executable
    if role in ("web", "websocket"):
        return web_argv(environ, arguments), {}
    if role == "worker":
        if len(arguments) != 1:
            raise UsageError(f"worker takes one argument, its queues ({','.join(QUEUES)}), comma-separated.")
        return worker_shape(arguments[0], environ).argv(python=python), {}
    if role == "beat":
        if arguments:
            raise UsageError("beat takes no arguments.")
        return fleet.beat_argv(data_dir(environ) / "celerybeat-schedule", python=python), {}
    if role in ("migrate", "purge-runs"):
        if not environ.get("DATABASE_OWNER_URL", "").strip() and not environ.get("DATABASE_OWNER_URL_FILE", ""):
            raise UsageError(
                f"{role} runs as the owner role: set DATABASE_OWNER_URL (or DATABASE_OWNER_URL_FILE) to the role "
                "that owns the tables (deploy/README.md, 'Database roles')."
            )
        if role == "migrate":
            return [python, MANAGE, "migrate", "--noinput", *arguments], {"AIOS_DATABASE_ROLE": "owner"}
        if not arguments:
            raise UsageError("purge-runs takes purge_runs' arguments, at least --older-than DAYS.")
        return [python, MANAGE, "purge_runs", *arguments], {"AIOS_DATABASE_ROLE": "owner"}
    if role == "check":
        return [python, MANAGE, "check", "--deploy", "--fail-level", "WARNING", *arguments], {}
    if role == "worker-health":
        return [python, MANAGE, "worker_health", *arguments], {}
    if role == "manage":
        if not arguments:
            raise UsageError("manage takes a manage.py command, e.g. 'manage createsuperuser'.")
        return [python, MANAGE, *arguments], {}
    roles = "web, websocket, worker QUEUES, beat, migrate, purge-runs, check, worker-health, probe, manage"
    raise UsageError(f"unknown role {role!r}: the image runs one of {roles}.")


def main(argv: Sequence[str] | None = None) -> None:
    arguments = list(sys.argv[1:] if argv is None else argv)
    role, rest = (arguments[0], arguments[1:]) if arguments else ("web", [])
    try:
        if role == "probe":
            raise SystemExit(probe(os.environ, rest))
        args, changes = command(role, rest, os.environ)
    except UsageError as error:
        print(f"aios: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    environ = {**os.environ, **changes}
    environ.setdefault("DJANGO_SETTINGS_MODULE", "aios_web.settings")
    os.chdir(APP_DIR)
    sys.stdout.flush()
    os.execve(args[0], args, environ)  # noqa: S606 (the role's own program, not a shell)
