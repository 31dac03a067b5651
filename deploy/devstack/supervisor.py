"""The supervisor: owns the stack's children in start order, restarts the ones that may come back, and stops
everything in reverse order when asked (or when a service the product cannot live without has died)."""

from __future__ import annotations

import fcntl
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil

from .config import (
    OWNER_MARK,
    POLL_SECONDS,
    REPO_ROOT,
    STOP_TIMEOUT_SECONDS,
    DevstackError,
    StackConfig,
    StopRequested,
    mark_data_dir,
)
from .console import Console
from .processes import ManagedProcess, ServiceFailed, describe_exit

# A child that ran this long before dying is restarted after the shortest delay again; one that keeps dying
# sooner waits twice as long each time, up to the longest, so a crash loop neither spins nor floods the console.
RESTART_STEADY_SECONDS = 60.0
RESTART_FIRST_DELAY_SECONDS = 1.0
RESTART_LONGEST_DELAY_SECONDS = 30.0


@dataclass
class _Restarts:
    """What the supervisor remembers about a restartable child across its deaths."""

    count: int = 0
    delay: float = 0.0
    due_at: float | None = None  # set while a dead child waits for its restart


class Supervisor:
    """Owns the children in start order, the stop request from signals, and the stop sequence."""

    def __init__(self, console: Console, config: StackConfig) -> None:
        self.console = console
        self.config = config
        self.processes: list[ManagedProcess] = []
        self._restarts: dict[str, _Restarts] = {}
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
        mark_data_dir(self.config.base_data_dir)
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

    def spawn(
        self, name: str, argv: Sequence[str], *, env: Mapping[str, str], restart: bool = False, **options: Any
    ) -> ManagedProcess:
        """Start a child with its log at `<data>/logs/<name>.log` and record it for the stop sequence.

        With `restart`, a death after start-up is repaired by `tend()` instead of stopping the stack.
        """
        options.setdefault("cwd", REPO_ROOT)
        process = ManagedProcess(
            name,
            argv,
            env={**env, OWNER_MARK: str(self.config.data_dir)},
            log_path=self.config.logs_dir / f"{name}.log",
            console=self.console,
            **options,
        )
        if restart:
            self._restarts[name] = _Restarts()
        self.check_stop()
        process.start()
        self.processes.append(process)
        self.record_child(process.pid)
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
        """The first long-running child that has exited, if any (while the stack starts, any death is fatal)."""
        for process in self.processes:
            if not process.one_shot and process.exit_code() is not None:
                return process
        return None

    def tend(self) -> list[ManagedProcess]:
        """Once the stack runs: restart each restartable child that exited, after a short backoff, saying so on
        the console; return the other long-running children that exited (the caller decides what that means).

        Call from the main thread, which outlives every child: restarted children get their parent-death signal
        from the thread that starts them. Nothing is restarted once a stop has been requested.
        """
        now = time.monotonic()
        dead: list[ManagedProcess] = []
        for index, process in enumerate(self.processes):
            code = process.exit_code()
            if process.one_shot or code is None:
                continue
            restarts = self._restarts.get(process.name)
            if restarts is None:
                dead.append(process)
            elif self.stop_signal is not None:
                continue
            elif restarts.due_at is None:
                lived = now - process.started_at
                # Reaped now, while its zombie still reserves the group id: kills what is left of its group.
                process.reap()
                quick = restarts.count > 0 and lived < RESTART_STEADY_SECONDS
                restarts.delay = (
                    min(restarts.delay * 2, RESTART_LONGEST_DELAY_SECONDS) if quick else RESTART_FIRST_DELAY_SECONDS
                )
                restarts.due_at = now + restarts.delay
                self.console.error(
                    f"{process.name} {describe_exit(code)} after {lived:.0f} s; restarting it in "
                    f"{restarts.delay:.0f} s (its log is kept as {process.log_path}.1)."
                )
            elif now >= restarts.due_at:
                # A stop that arrives meanwhile finds the replacement in the list and stops it with the rest.
                replacement = process.again().start()
                self.processes[index] = replacement
                self.record_child(replacement.pid)
                restarts.count += 1
                restarts.due_at = None
                self.console.say(f"{process.name} restarted (pid {replacement.pid}, restart {restarts.count}).")
        return dead

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
