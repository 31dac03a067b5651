"""What the step library may read on a person's behalf: a registry the upper apps fill.

The step library sits below the apps that know a person's work (approvals, runs), so it cannot import their
selectors. It declares the readers it wants by name; each upper app registers its reader in its
`AppConfig.ready()`, built on its own permission-aware selectors. A step calls `READERS[what](user_id, params)`
and never sees a queryset.

A reader takes the id of the person to read for (she must exist and be active, else it reads nothing) and a
dict of parameters (`limit`: how many items at most; `workflow_id`: the asking run's workflow, whose own runs
are not "work" and are left out of run lists and counts), and returns a `Reading`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypedDict

# The lookups a step may ask for, with what each answers (the step's config offers exactly these).
LOOKUPS: dict[str, str] = {
    "my_approvals": "the approval items she may decide: claimed by her, or unclaimed in her queues",
    "my_runs_needing_attention": "runs she started or may see that failed, wait on an incident or wait long on people",
    "weekly_summary": "her numbers of the last 7 days: items decided, approved and rejected; runs started, "
    "succeeded and failed",
}


class Reading(TypedDict):
    """What a reader returns: the rows (plain JSON values, each a flat dict) and one readable sentence."""

    items: list[dict[str, Any]]
    summary: str


Reader = Callable[[int, dict[str, Any]], Reading]

# Filled by the upper apps' ready(): lookup name (a key of LOOKUPS) -> reader.
READERS: dict[str, Reader] = {}
