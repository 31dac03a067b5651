"""Crash points for the fault tests (tests/faults).

`crash_point("after_claim")` kills the current process with SIGKILL, with the configured probability,
from a seeded random generator so a failing run can be replayed. With AIOS_FAULTS unset (the default and
production) the configuration is empty and every call returns at once.
"""

from __future__ import annotations

import os
import random
import signal

from django.conf import settings

POINTS = (
    "after_claim",
    "mid_step",
    "after_external_call",
    "before_result_commit",
    "after_result_commit_before_dispatch",
    "after_dispatch",
    "escalation_before_commit",
)


def _parse(spec: str) -> dict[str, float]:
    configured: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, probability = item.partition(":")
        if name not in POINTS:
            raise ValueError(f"AIOS_FAULTS names an unknown crash point {name!r}; known: {', '.join(POINTS)}")
        configured[name] = float(probability or 1)
    return configured


_configured = _parse(settings.AIOS_FAULTS)
# One generator per process, made on first use: a generator made at import would be copied into every
# forked pool child, and all of them would crash at the same draw.
_random: tuple[int, random.Random] | None = None


def crash_point(name: str) -> None:
    """Die here (SIGKILL, no clean-up) with the configured probability for `name`."""
    global _random
    if not _configured:
        return
    probability = _configured.get(name)
    if not probability:
        return
    if _random is None or _random[0] != os.getpid():
        _random = (os.getpid(), random.Random(settings.AIOS_FAULTS_SEED * 1_000_003 + os.getpid()))  # noqa: S311
    if _random[1].random() < probability:
        os.kill(os.getpid(), signal.SIGKILL)
