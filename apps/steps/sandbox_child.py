"""The child side of apps/steps/sandbox.py: reads (kind, source, variables) requests from stdin, answers on stdout.

Runs without Django. Its memory is capped once at start (RLIMIT_AS); its CPU before every evaluation
(RLIMIT_CPU set to the time used so far plus the budget, so SIGXCPU ends an evaluation that passes it).
"""

from __future__ import annotations

import os
import pickle
import resource
import struct
import sys
from typing import Any

_HEADER = struct.Struct("!I")


def _read_exactly(stream: Any, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _cpu_used() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    memory = int(os.environ.get("AIOS_SANDBOX_MEMORY", "0"))
    cpu_budget = int(os.environ.get("AIOS_SANDBOX_CPU", "3"))
    # Imported before the memory cap: the cap is for what an evaluation allocates, not for the libraries.
    from apps.steps.expressions import ExpressionError, cel_evaluate_here, template_render_here

    if memory:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        header = _read_exactly(stdin, _HEADER.size)
        if header is None:
            return  # the parent is gone or done
        body = _read_exactly(stdin, _HEADER.unpack(header)[0])
        if body is None:
            return
        kind, source, variables = pickle.loads(body)  # noqa: S301 (from our own parent process)
        resource.setrlimit(resource.RLIMIT_CPU, (int(_cpu_used()) + cpu_budget + 1, resource.RLIM_INFINITY))
        answer: tuple[Any, ...]
        try:
            if kind == "cel":
                answer = ("ok", cel_evaluate_here(source, variables))
            else:
                answer = ("ok", template_render_here(source, variables))
        except ExpressionError as error:
            answer = ("error", str(error))
        except MemoryError:
            answer = ("memory",)
        except RecursionError:
            answer = ("error", "the evaluation nests too deeply")
        except Exception as error:
            # What a template's Python raises (1/0, int('x')): the step's error, not the end of this child.
            answer = ("error", f"{type(error).__name__}: {str(error)[:300]}")
        try:
            data = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            # A value pickle cannot carry (the CEL binding's own types): say so rather than die.
            data = pickle.dumps(("error", "the result is not plain data"), protocol=pickle.HIGHEST_PROTOCOL)
        stdout.write(_HEADER.pack(len(data)) + data)
        stdout.flush()
        if answer[0] == "memory":
            return


if __name__ == "__main__":
    main()
