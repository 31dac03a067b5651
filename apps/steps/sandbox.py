"""Evaluation of CEL expressions and Jinja templates in child processes with a CPU, memory and time budget.

Why a process and not a thread: the CEL binding holds the GIL while it evaluates (a nested `.map()` of depth 6
runs for seconds and no other thread of the process runs meanwhile, the step's heartbeat included), so nothing
inside the process can stop it. A child process can be stopped from outside: it runs under RLIMIT_AS (memory)
and a per-evaluation RLIMIT_CPU, and the parent waits on the pipe with a wall-clock timeout (releasing the
GIL) and kills the child when it passes. A killed child is replaced on the next call.

Children are started fresh (`python -c`, never forked from a Django process, which holds database sockets and
threads), import only `apps.steps.expressions` (no Django), and serve one request at a time over stdin/stdout.
Each parent process keeps a few idle children and starts more when threads evaluate at once (inference workers
run threads).
A child sees EOF on stdin and exits when its parent dies.

Contract: `sandbox_evaluate("cel" | "template", source, variables)` returns the value or raises
`SandboxError` (the evaluation's own complaint, or "used more than N seconds" / "more than N MB of memory").
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any


class SandboxError(Exception):
    """An evaluation that failed or passed its budget; the message says which, in words for the step's author."""


# The budget of one evaluation. Conditions and templates over run data take milliseconds; these bounds are far
# above that and far below what would starve a worker (a step's lease is minutes; the heartbeat keeps ticking
# while the parent waits, because waiting releases the GIL).
# The CPU limit is the bound; the wall-clock limit is only a backstop for a child that stops answering, ten times
# wider, so that an ordinary evaluation on a busy machine (a child descheduled for seconds) is never stopped.
TIME_LIMIT_SECONDS = 30.0
CPU_LIMIT_SECONDS = 3
# Address space of a child: the interpreter with jinja2 and the CEL binding maps about 60 MB; run data and the
# values an expression builds must fit in the rest.
MEMORY_LIMIT_BYTES = 512 * 1024 * 1024
IDLE_CHILDREN = 4
_ROOT = str(Path(__file__).resolve().parents[2])
_HEADER = struct.Struct("!I")
_MAX_MESSAGE = 256 * 1024 * 1024

_CHILD_CODE = f"import sys; sys.path.insert(0, {_ROOT!r}); from apps.steps.sandbox_child import main; main()"


class _Unpickler(pickle.Unpickler):
    """What a child sends back is data (what CEL or Jinja produced): plain containers, and the date and time
    types CEL returns. Nothing else is rebuilt, so a child can never make the parent run code."""

    _ALLOWED = {
        ("datetime", "datetime"),
        ("datetime", "date"),
        ("datetime", "time"),
        ("datetime", "timedelta"),
        ("datetime", "timezone"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not data")


class _Child:
    """One child process and its pipes."""

    def __init__(self) -> None:
        # Our own interpreter and module, no user input in the command line.
        self.process = subprocess.Popen(  # noqa: S603
            [sys.executable, "-c", _CHILD_CODE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "AIOS_SANDBOX_MEMORY": str(MEMORY_LIMIT_BYTES),
                "AIOS_SANDBOX_CPU": str(CPU_LIMIT_SECONDS),
            },
            close_fds=True,
            start_new_session=True,  # a Ctrl-C meant for the worker does not reach the child mid-reply
        )

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        for stream in (self.process.stdin, self.process.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass

    def _read_exactly(self, size: int, deadline: float) -> bytes:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        chunks = io.BytesIO()
        while chunks.tell() < size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                raise TimeoutError
            chunk = os.read(fd, min(size - chunks.tell(), 1 << 20))
            if not chunk:
                raise EOFError
            chunks.write(chunk)
        return chunks.getvalue()

    def ask(self, request: tuple[Any, ...], timeout: float) -> tuple[Any, ...]:
        assert self.process.stdin is not None
        data = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        self.process.stdin.write(_HEADER.pack(len(data)) + data)
        self.process.stdin.flush()
        deadline = time.monotonic() + timeout
        (size,) = _HEADER.unpack(self._read_exactly(_HEADER.size, deadline))
        if size > _MAX_MESSAGE:
            raise EOFError
        answer = _Unpickler(io.BytesIO(self._read_exactly(size, deadline))).load()
        if not isinstance(answer, tuple):
            raise EOFError
        return answer


class _Pool:
    """Idle children of this process. Rebuilt after a fork (a forked Celery child must not share its parent's
    pipes)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.idle: list[_Child] = []

    def take(self) -> _Child:
        with self.lock:
            while self.idle:
                child = self.idle.pop()
                if child.process.poll() is None:
                    return child
        return _Child()

    def give_back(self, child: _Child) -> None:
        with self.lock:
            if len(self.idle) < IDLE_CHILDREN:
                self.idle.append(child)
                return
        child.kill()


_pool: _Pool | None = None
_pool_lock = threading.Lock()


def _forget_after_fork() -> None:
    """In a forked process (Celery's prefork pool): close the inherited pipes of the parent's children without
    touching the children, so a child sees EOF and exits when its own parent does, not when every fork has."""
    global _pool, _pool_lock
    inherited, _pool = _pool, None
    _pool_lock = threading.Lock()  # another thread may have held it at the fork
    if inherited is None:
        return
    for child in inherited.idle:
        for stream in (child.process.stdin, child.process.stdout):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()


os.register_at_fork(after_in_child=_forget_after_fork)


def _current_pool() -> _Pool:
    global _pool
    with _pool_lock:
        if _pool is None or _pool.pid != os.getpid():
            # After a fork the inherited children belong to the parent; this process starts its own.
            _pool = _Pool()
        return _pool


def sandbox_evaluate(kind: str, source: str, variables: dict[str, Any]) -> Any:
    """The value of a CEL expression (`kind` "cel") or the text of a template (`kind` "template") over
    `variables`, evaluated in a child process under the budget above. Raises SandboxError with the reason
    (the evaluation's own error, or the budget it passed)."""
    name = _NAMES[kind]
    pool = _current_pool()
    child = pool.take()
    try:
        answer = child.ask((kind, source, variables), TIME_LIMIT_SECONDS)
    except TimeoutError:
        child.kill()
        raise SandboxError(f"the {name} ran for more than {TIME_LIMIT_SECONDS:g} seconds and was stopped") from None
    except (EOFError, OSError, pickle.UnpicklingError, struct.error, ValueError):
        child.kill()
        if child.process.returncode == -signal.SIGXCPU:
            raise SandboxError(
                f"the {name} used more than {CPU_LIMIT_SECONDS} seconds of CPU and was stopped"
            ) from None
        # The CEL engine aborts the process when an allocation fails under RLIMIT_AS (Rust's default).
        raise SandboxError(f"the {name} {_MEMORY_WORDS} and was stopped") from None
    if answer[0] == "memory":
        # The child replied, but a process that ran out of memory is not trusted with the next evaluation.
        child.kill()
        raise SandboxError(f"the {name} {_MEMORY_WORDS} and was stopped")
    pool.give_back(child)
    if answer[0] == "ok":
        return answer[1]
    raise SandboxError(str(answer[1]))


_NAMES = {"cel": "expression", "template": "template"}
_MEMORY_WORDS = f"needed more than {MEMORY_LIMIT_BYTES // (1024 * 1024)} MB of memory"
