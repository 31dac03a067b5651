"""`assistant.lookup`: read the work of the person who started the run (her approvals, her runs, her week)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from apps.steps.base import StepConfig, StepContext, StepError, StepOutcome, StepType
from apps.steps.readers import LOOKUPS, READERS
from apps.steps.registry import register

MAX_ITEMS = 50
NOBODY = (
    "Nobody started this run (a schedule, a webhook or another system did), so there is no one whose work to look up."
)


class AssistantLookupConfig(StepConfig):
    what: Literal["my_approvals", "my_runs_needing_attention", "weekly_summary"] = Field(
        description="What to look up for the person who started the run: my_approvals (the items she may decide, "
        "oldest first), my_runs_needing_attention (failed runs, runs with an incident or waiting long on people) "
        "or weekly_summary (her numbers of the last 7 days)."
    )
    limit: int = Field(10, ge=1, le=MAX_ITEMS, description="How many items at most (1 to 50).")


@register
class AssistantLookup(StepType):
    """Reads, on behalf of the person who started the run and with exactly her rights, one view of her work,
    through the readers the approvals and runs apps register (apps/steps/readers.py). A run nobody started
    reads nothing and says so. Made for an assistant's tools; the model's arguments are not used.

    Output: `{"what": <lookup>, "items": [{...}], "count": n, "summary": "<one readable sentence>"}`.
    """

    slug = "assistant.lookup"
    name = "Look up my work"
    description = (
        "Look up the pending approvals, the runs needing attention or the week's numbers of the person who "
        "started the run, with her rights."
    )
    Config = AssistantLookupConfig
    category = "Data"
    # What she sees changes as people decide and runs finish: a replay shows what the original run read.
    replay_reuses_output = True

    def execute(self, config: AssistantLookupConfig, context: StepContext) -> StepOutcome:  # type: ignore[override]
        if context.initiator_id is None:
            return StepOutcome(output={"what": config.what, "items": [], "count": 0, "summary": NOBODY})
        reader = READERS.get(config.what)
        if reader is None:
            raise StepError(f'Nothing in this installation can look up "{config.what}" ({LOOKUPS[config.what]}).')
        reading = reader(context.initiator_id, {"limit": config.limit, "workflow_id": context.workflow_id})
        items = list(reading["items"])[: config.limit]
        return StepOutcome(
            output={"what": config.what, "items": items, "count": len(items), "summary": reading["summary"]}
        )

    def simulate(self, config: AssistantLookupConfig, context: StepContext) -> dict[str, Any]:  # type: ignore[override]
        return {
            "simulated": True,
            "what": config.what,
            "items": [],
            "count": 0,
            "summary": "A test run does not read anyone's work.",
        }
