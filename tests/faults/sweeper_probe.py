"""A sweeper process for the pooling test (test_pooled_sweeper.py): calls the sweep task in a loop, as beat's
messages make a worker do, and records when each sweep that got the duty was inside it.

    python -m tests.faults.sweeper_probe --record FILE --seconds 6 [--hold]

A probe hook on the sweep's after-sweep registry (apps.runs.hooks.after_sweep: the sweep calls it while it holds
the duty, after renewing it) appends "pid start end" to FILE and stays inside for a moment, so two sweeps that
held the duty at once show as overlapping spans. With --hold the first sweep's hook writes "pid holding" and
never returns, so the test can SIGKILL a sweeper that holds the duty.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

INSIDE_SECONDS = 0.15


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--hold", action="store_true")
    options = parser.parse_args()

    import django

    django.setup()
    from apps.runs import hooks
    from apps.runs.tasks import sweep_task

    record = options.record

    def write(line: str) -> None:
        with record.open("a") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def inside() -> int:
        started = time.time()
        if options.hold:
            write(f"{os.getpid()} holding")
            while True:
                time.sleep(60)
        time.sleep(INSIDE_SECONDS)
        write(f"{os.getpid()} {started:.6f} {time.time():.6f}")
        return 1

    # Only this probe's hook: the product's own (evaluation scoring) are not what this test is about.
    hooks.after_sweep.clear()
    hooks.after_sweep["probe"] = inside
    deadline = time.monotonic() + options.seconds
    skipped = 0
    while time.monotonic() < deadline:
        if sweep_task().get("skipped"):
            skipped += 1
        time.sleep(0.01)
    write(f"{os.getpid()} skipped {skipped}")


if __name__ == "__main__":
    main()
