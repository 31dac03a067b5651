"""The crash points themselves (apps/runs/faults.py): every process must draw its own sequence.

Celery's prefork pool forks its children from the master, which imported apps.runs.faults at start-up. A
generator seeded once at import is copied into every child, and into every replacement of a child that a
crash point killed: they all replay the master's sequence and die at the same draw. When that draw comes
early, no child ever gets a step through and the fault tests hang (seen in D1: 469 pool children killed in
150 s and not one of 20 runs finished; whether it happens depends on the master's pid).
"""

from __future__ import annotations

import importlib
import os

import apps.runs.faults

CHILDREN = 16
DRAWS = 64


def draws_until_death(faults) -> int:
    """Fork a child that passes the crash point up to DRAWS times; how many draws it reached."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report each draw before making it, then exit without any clean-up
        os.close(read_end)
        for _ in range(DRAWS):
            os.write(write_end, b".")
            faults.crash_point("mid_step")
        os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as reported:
        return len(reported.read())


def test_forked_children_draw_independent_crash_sequences(settings):
    settings.AIOS_FAULTS = "mid_step:0.5"
    faults = importlib.reload(apps.runs.faults)
    try:
        deaths = [draws_until_death(faults) for _ in range(CHILDREN)]
    finally:
        settings.AIOS_FAULTS = ""
        importlib.reload(apps.runs.faults)
    # Independent children die at different draws (all equal by chance: about 2**-16). Identical deaths
    # mean the generator was seeded before the fork and every child replays the same sequence.
    assert len(set(deaths)) > 1, (
        f"all {CHILDREN} forked children died at draw {deaths[0]}: the crash-point generator is seeded once at "
        "import (in the Celery master) and copied into every pool child; seed it per process"
    )
