"""Hooks that upper layers fill so the engine can reach them without importing them.

The engine parks a step that waits for a person or a child run; the approvals app (above runs) registers
what to do when an approval step starts waiting and when its due time passes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from apps.runs.models import Run, StepRun
    from apps.steps.base import Wait

# for_what → called inside the transaction that parked the step.
on_wait: dict[str, Callable[[StepRun, Wait], None]] = {}
# Called when an approval's due time passes while the step still waits.
on_approval_due: list[Callable[[StepRun], None]] = []


def approval_due(step_run: StepRun) -> None:
    for hook in on_approval_due:
        hook(step_run)


# Called inside the transaction that cancels a run's unfinished steps (the run is locked): the approvals app
# closes the run's pending requests there, so no one works an item whose run is gone.
on_run_cancelled: list[Callable[[Run], None]] = []
# Each returns the ids of runs a user may view because of what they do elsewhere (a reviewer sees the runs
# behind the items of her queues), as a queryset of ids or a list.
run_visibility: list[Callable[[Any], Any]] = []


def run_cancelled(run: Run) -> None:
    for hook in on_run_cancelled:
        hook(run)


# Each returns {step run id: note} for steps of `run` that an upper app has something to say about on the run
# page, for `user` (the approvals app: an approval's state, who holds it, its due time, and a link to decide).
# A note is {"text": str, "link": str, "link_label": str}; called once per render, for all steps at once.
step_notes: list[Callable[[Any, Run, list[StepRun]], dict[int, dict[str, str]]]] = []


# Called at the end of every sweep, outside its transactions: periodic bookkeeping of upper apps that must follow
# the sweeper's rhythm (the evaluations app scores reports whose case runs have finished). Riding the sweep costs
# no message of its own: a second task on the sweep's interval doubled the default queue's traffic and made the
# sweep itself wait behind it, slowing the recovery of steps whose worker died (fault test D2: 5 s became 14 s).
# Each returns a count for the sweep's report; one that raises is logged and the sweep goes on.
after_sweep: dict[str, Callable[[], int]] = {}
