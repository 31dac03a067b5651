"""`python -m deploy.devstack run|services|test`: the three modes of the embedded stack (see the package docstring)."""

from __future__ import annotations

import argparse
import io
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

from workers.fleet import FleetError, fleet

from .config import (
    LOOPBACK,
    OWNER_MARK,
    REPO_ROOT,
    STOP_TIMEOUT_SECONDS,
    WEB_READY_SECONDS,
    WORKER_READY_SECONDS,
    DevstackError,
    StackConfig,
    StopRequested,
    build_config,
    child_environment,
    load_dotenv_into_environ,
)
from .console import Console
from .probes import http_ok
from .processes import ManagedProcess, ServiceFailed, death_signal_preexec, describe_exit
from .services import start_services
from .supervisor import Supervisor


def supervise(supervisor: Supervisor) -> int:
    """Block until a stop signal (return 0), restarting children that may come back; a service the product
    cannot live without (PostgreSQL, Redis) that exits stops the stack (ServiceFailed)."""
    while supervisor.stop_signal is None:
        for failed in supervisor.tend():
            code = failed.exit_code()
            assert code is not None
            raise ServiceFailed(
                f"{failed.name} {describe_exit(code)} unexpectedly; AIOS cannot run without it, so the whole "
                "stack stops.",
                failed,
            )
        time.sleep(0.5)
    return 0


def service_lines(env: Mapping[str, str]) -> list[str]:
    """`export` lines for the service URLs in use, the mode and the key files, for the banners: what a shell
    needs to run manage.py against this stack (the settings default to production otherwise)."""
    names = (
        "AIOS_ENV",
        "DATABASE_URL",
        "DATABASE_OWNER_URL",
        "REDIS_URL",
        "AIOS_INFERENCE_URL",
        "EMAIL_URL",
        "DJANGO_SECRET_KEY_FILE",
        "AIOS_CREDENTIALS_KEY_FILE",
    )
    return [f"    export {name}={shlex.quote(env[name])}" for name in names if name in env]


def mail_lines(config: StackConfig) -> list[str]:
    """Where the catch-all keeps the product's mail, for the banners (nothing when EMAIL_URL is external)."""
    if config.smtp_port is None:
        return []
    return [f"  Mail the product sends: {config.mail_dir}/ (caught, never delivered)"]


def outside_lines(config: StackConfig) -> list[str]:
    """Where the demo's stand-in systems and the email triggers' server listen, for the `run` banner."""
    lines = []
    if config.outside_port is not None:
        lines.append(f"  What the demo ERP and CMS received: http://{LOOPBACK}:{config.outside_port}/")
    if config.inbound_smtp_port is not None:
        lines.append(f"  Email triggers receive mail over SMTP on {LOOPBACK}:{config.inbound_smtp_port}")
    return lines


def banner(lines: list[str]) -> str:
    rule = "=" * 78
    return "\n".join(["", rule, *lines, rule, ""])


def cmd_services(supervisor: Supervisor, config: StackConfig) -> int:
    """`services`: PostgreSQL, Redis, the inference server and the catch-all SMTP server, for a web app the
    developer runs himself."""
    env = child_environment(config)
    start_services(supervisor, config, env)
    supervisor.console.plain(
        banner(
            [
                "  AIOS services are running. In another shell:",
                "",
                *service_lines(env),
                "",
                f"  Logs: {config.logs_dir}/<name>.log",
                *mail_lines(config),
                "  Ctrl-C stops everything.",
            ]
        )
    )
    return supervise(supervisor)


def cmd_run(supervisor: Supervisor, config: StackConfig) -> int:
    """`run`: the services, migrate, seed_demo, then the worker fleet (workers/fleet.py) with the web server."""
    assert config.web_port is not None
    env = child_environment(config)
    if not (REPO_ROOT / "manage.py").is_file():
        raise DevstackError(f"{REPO_ROOT / 'manage.py'} is missing: is this an AIOS checkout?")
    try:
        processes = fleet(web_port=config.web_port, beat_schedule=config.data_dir / "celerybeat-schedule")
    except FleetError as exc:
        raise DevstackError(str(exc)) from None
    for process in processes:
        supervisor.console.register(process.name)
    start_services(supervisor, config, env)
    python = sys.executable
    supervisor.console.say("Applying database migrations ...")
    supervisor.run_once("migrate", [python, "manage.py", "migrate", "--noinput"], env=env)
    seed = supervisor.run_once("seed", [python, "manage.py", "seed_demo"], env=env, capture_stdout=True)
    if config.inbound_smtp_port is not None:
        # Email triggers: mail to <trigger address>@AIOS_INBOUND_MAIL_DOMAIN on this port starts runs.
        supervisor.console.register("inbound-mail")
        supervisor.spawn(
            "inbound-mail",
            [python, "manage.py", "mail_inbound", "--port", str(config.inbound_smtp_port)],
            env=env,
            restart=True,
        )
    started = {
        process.name: supervisor.spawn(
            process.name,
            process.argv,
            env=env,
            ready_line=process.ready_line,
            quiet=process.routine_lines,
            restart=True,
        )
        for process in processes
    }
    url = f"http://{LOOPBACK}:{config.web_port}"
    supervisor.wait_ready(
        started["web"], lambda: http_ok(f"{url}/healthz"), what=f"the web server on {url}", timeout=WEB_READY_SECONDS
    )
    for process in processes:
        if process.role == "worker":
            worker = started[process.name]
            supervisor.wait_ready(
                worker,
                worker.ready.is_set,
                what=f"the Celery {worker.name}",
                timeout=WORKER_READY_SECONDS,
                required=False,
            )
    credentials = [f"    {line}" for line in seed.stdout_lines if line.strip()] or ["    (seed_demo printed nothing)"]
    supervisor.console.plain(
        banner(
            [
                f"  AIOS is running at {url}",
                "",
                "  Demo accounts:",
                *credentials,
                "",
                "  Services:",
                *service_lines(env),
                f"  Logs: {config.logs_dir}/<name>.log",
                *mail_lines(config),
                *outside_lines(config),
                "  Ctrl-C stops everything.",
            ]
        )
    )
    return supervise(supervisor)


def cmd_test(supervisor: Supervisor, config: StackConfig, command: list[str]) -> int:
    """`test`: start the test services, run `command` against them, stop them, return its exit code.

    The command stays in the launcher's process group (unlike the services), so a debugger in it keeps the
    terminal and Ctrl-C reaches it directly; pytest then finishes its own teardown before the services stop.
    Exit code 5 (pytest collected no test) becomes 1: a suite that ran nothing has not passed.
    """
    env = child_environment(config)
    start_services(supervisor, config, env)
    supervisor.console.say(f"Test services are up; logs in {config.logs_dir}. Running: {shlex.join(command)}")
    test_env = {**env, OWNER_MARK: str(config.data_dir)}
    try:
        proc = subprocess.Popen(
            command, cwd=REPO_ROOT, env=test_env, preexec_fn=death_signal_preexec(signal.SIGTERM, os.getpid())
        )
    except OSError as exc:
        raise DevstackError(f"could not run {command[0]}: {exc}") from exc
    supervisor.record_child(proc.pid)
    stop_seen_at: float | None = None
    terminated = False
    reported: set[str] = set()
    while (code := proc.poll()) is None:
        if supervisor.stop_signal is not None:
            if stop_seen_at is None:
                stop_seen_at = time.monotonic()
                # A terminal Ctrl-C already reached the command (same process group); anything else is forwarded.
                if supervisor.stop_signal != signal.SIGINT:
                    proc.send_signal(supervisor.stop_signal)
            waited = time.monotonic() - stop_seen_at
            if not terminated and (waited > STOP_TIMEOUT_SECONDS or supervisor.hurry()):
                proc.terminate()
                terminated = True
            elif waited > 2 * STOP_TIMEOUT_SECONDS or (terminated and supervisor.hurry()):
                proc.kill()
        for failed in supervisor.tend():
            if failed.name in reported:
                continue
            reported.add(failed.name)
            exit_code = failed.exit_code()
            assert exit_code is not None
            supervisor.console.error(f"{failed.name} {describe_exit(exit_code)} while the tests were running.")
            print_tail(supervisor.console, failed)
        time.sleep(0.2)
    if code == 5:
        supervisor.console.error("pytest ran no test (exit code 5): counting that as a failure.")
        return 1
    if code < 0:
        return 128 - code
    return code


def print_tail(console: Console, process: ManagedProcess) -> None:
    """Show the last lines of a child's log after it failed."""
    lines = process.tail()
    if not lines:
        console.say(f"{process.log_path} is empty.")
        return
    console.say(f"Last {len(lines)} lines of {process.log_path}:")
    console.plain("\n".join(f"    {line}" for line in lines))


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.devstack",
        description="Run the embedded AIOS stack (see docs/embedded-stack.md).",
    )
    modes = parser.add_subparsers(dest="mode", required=True, metavar="{run,services,test}")
    modes.add_parser("run", help="start everything and serve the app on http://127.0.0.1:8000")
    modes.add_parser("services", help="start PostgreSQL, Redis, the inference server and the mail catcher only")
    test = modes.add_parser("test", help="start the test services, run a command against them (after --)")
    test.add_argument("command", nargs=argparse.REMAINDER, help="the command to run, e.g. -- python -m pytest -x")
    args = parser.parse_args(argv)
    if args.mode == "test":
        command = list(args.command)
        if command and command[0] == "--":
            command = command[1:]
        args.command = command or [sys.executable, "-m", "pytest"]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: returns the process exit code (0 after a requested stop; the command's code in `test`)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if isinstance(sys.stdout, io.TextIOWrapper):
        # A C-locale terminal must not crash the launcher on a child's non-ASCII log line.
        sys.stdout.reconfigure(errors="replace")
    console = Console()
    try:
        load_dotenv_into_environ(REPO_ROOT / ".env")
        config = build_config(args.mode)
    except DevstackError as exc:
        console.error(str(exc))
        return 2
    supervisor = Supervisor(console, config)
    supervisor.install_signal_handlers()
    try:
        if args.mode == "run":
            return cmd_run(supervisor, config)
        if args.mode == "services":
            return cmd_services(supervisor, config)
        return cmd_test(supervisor, config, args.command)
    except StopRequested:
        return 130 if config.is_test else 0
    except ServiceFailed as exc:
        console.error(str(exc))
        if exc.process is not None:
            print_tail(console, exc.process)
        return 1
    except DevstackError as exc:
        console.error(str(exc))
        return 1
    finally:
        supervisor.stop_all()


if __name__ == "__main__":
    sys.exit(main())
