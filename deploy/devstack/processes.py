"""Child processes: each in a session of its own, stopped in order, cleaned up without ever signalling a stranger.

This is the one process toolkit of the house: the stack's launcher, the tests, the benchmarks and the development
inference server's runner all start their children with `ManagedProcess`.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import psutil

from .config import DevstackError
from .console import Console

LOG_TAIL_LINES = 20


class ServiceFailed(DevstackError):
    """A child exited or never became ready; `process` names it so its log tail can be shown."""

    def __init__(self, message: str, process: ManagedProcess | None) -> None:
        super().__init__(message)
        self.process = process


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
    """One child process in a session of its own, with its output in a log file and (optionally) on a console.

    Its own session keeps the terminal's Ctrl-C away from it: whoever started it alone decides the stop order.
    By default the kernel sends it its stop signal if its starter dies (`die_with_parent`), so a SIGKILLed
    launcher or test run leaves nothing behind.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        log_path: Path,
        console: Console | None = None,
        stop_signal: int = signal.SIGTERM,
        run_as: pwd.struct_passwd | None = None,
        echo: bool = True,
        quiet: re.Pattern[str] | None = None,
        capture_stdout: bool = False,
        one_shot: bool = False,
        ready_line: re.Pattern[str] | None = None,
        die_with_parent: bool = True,
    ) -> None:
        self.name = name
        self.argv = [str(part) for part in argv]
        self.env = dict(env)
        self.cwd = cwd
        self.log_path = log_path
        self.console = console
        self.stop_signal = stop_signal
        self.run_as = run_as
        self.echo = echo and console is not None
        # Lines that go to the log file but not to the console: true, but too frequent for a person to read.
        self.quiet = quiet
        self.capture_stdout = capture_stdout
        self.one_shot = one_shot
        self.ready_line = ready_line
        self.die_with_parent = die_with_parent
        # Set when a line of output matches `ready_line`: the readiness signal of children that serve no port.
        self.ready = threading.Event()
        self.popen: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.stdout_lines: list[str] = []
        self._log: IO[bytes] | None = None
        self._log_lock = threading.Lock()
        self._readers: list[threading.Thread] = []
        if console is not None:
            console.register(name)

    def again(self) -> ManagedProcess:
        """A fresh, unstarted child with this one's command, environment and options (to restart it)."""
        return ManagedProcess(
            self.name,
            self.argv,
            env=self.env,
            cwd=self.cwd,
            log_path=self.log_path,
            console=self.console,
            stop_signal=self.stop_signal,
            run_as=self.run_as,
            echo=self.echo,
            quiet=self.quiet,
            capture_stdout=self.capture_stdout,
            one_shot=self.one_shot,
            ready_line=self.ready_line,
            die_with_parent=self.die_with_parent,
        )

    # Start ---------------------------------------------------------------------------------------------------

    def start(self) -> ManagedProcess:
        """Spawn the child (and, when its lines are read as they come, its output reader threads).

        With `die_with_parent`, call from the thread that will outlive the child: PR_SET_PDEATHSIG fires when
        the *thread* that forked the child exits, so a child forked from a short-lived thread would be killed
        when that thread ends.
        """
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.log_path.exists():
            # Keep the previous run's log: after a crash it is the one worth reading.
            self.log_path.replace(self.log_path.with_name(self.log_path.name + ".1"))
        self._log = self.log_path.open("ab")
        # Nobody reads the lines as they come: the child writes straight into its log file, in its own order.
        pumped = self.echo or self.capture_stdout or self.ready_line is not None
        output: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
        if not pumped:
            output = {"stdout": self._log, "stderr": subprocess.STDOUT}
        options: dict[str, Any] = {}
        if self.run_as is not None:
            options = {"user": self.run_as.pw_uid, "group": self.run_as.pw_gid, "extra_groups": []}
        if self.die_with_parent:
            options["preexec_fn"] = death_signal_preexec(self.stop_signal, os.getpid())
        try:
            self.popen = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                **output,
                **options,
            )
        except OSError as exc:
            self._log.close()
            raise DevstackError(f"could not start {self.name} ({self.argv[0]}): {exc}") from exc
        self.started_at = time.monotonic()
        if pumped:
            assert self.popen.stdout is not None and self.popen.stderr is not None
            for stream, keep in ((self.popen.stdout, self.capture_stdout), (self.popen.stderr, False)):
                reader = threading.Thread(
                    target=self._pump, args=(stream, keep), name=f"{self.name}-output", daemon=True
                )
                reader.start()
                self._readers.append(reader)
        return self

    def _pump(self, stream: IO[bytes], keep: bool) -> None:
        """Copy one output stream line by line to the log file, the console and (for stdout) the capture list."""
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
            if self.echo and self.console is not None and not (self.quiet and self.quiet.search(text)):
                self.console.emit(self.name, text)
        stream.close()

    def wait_until(self, ready: Callable[[str], bool], timeout: float = 60.0) -> ManagedProcess:
        """Poll until `ready(log text)` is true; raise ServiceFailed (with the log's tail) if the child exits or
        `timeout` passes first. For starters without a Supervisor: tests, benchmarks, the devserver runner."""
        deadline = time.monotonic() + timeout
        while not ready(self.log_text()):
            code = self.exit_code()
            if code is not None or time.monotonic() > deadline:
                what = describe_exit(code) if code is not None else f"was not ready after {timeout:.0f} s"
                tail = "\n".join(self.tail(60))
                raise ServiceFailed(f"{self.name} {what}; the end of {self.log_path}:\n{tail}", self)
            time.sleep(0.05)
        return self

    # State ---------------------------------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was never started"
        return self.popen.pid

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

    def alive(self) -> bool:
        return self.popen is not None and self.exit_code() is None

    def log_text(self) -> str:
        """Everything the child has written so far ("" before its first line)."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = LOG_TAIL_LINES) -> list[str]:
        """The last lines of this child's log."""
        return read_tail(self.log_path, lines)

    def wait_for_output(self, timeout: float = 5.0) -> None:
        """Wait until the reader threads have drained the pipes (after exit), so captured output is complete."""
        deadline = time.monotonic() + timeout
        for reader in self._readers:
            reader.join(max(0.0, deadline - time.monotonic()))

    # Stop ----------------------------------------------------------------------------------------------------

    def stop(self, timeout: float, hurry: Callable[[], bool] = lambda: False) -> None:
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
                if not hurry() and self.console is not None:
                    self.console.say(f"{self.name} did not stop within {timeout:.0f} s; killing it.")
                self._signal(signal.SIGKILL, group=True)
                self._wait_exit(5.0, lambda: False)
        self.reap(grace=0.0 if hurry() else 2.0)

    def kill(self) -> None:
        """SIGKILL the whole process group at once (no clean-up, no warm shutdown) and wait until it is gone."""
        if self.popen is None:
            return
        if self.exit_code() is None:
            self._signal(signal.SIGKILL, group=True)
            self._wait_exit(5.0, lambda: False)
        self.reap(grace=0.0)

    def signal_group(self, signum: int) -> None:
        """Send `signum` to every process of the child's group (while the child has not been reaped)."""
        if self.popen is not None and self.popen.returncode is None:
            self._signal(signum, group=True)

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
