"""The runs app's reader for the step library's `assistant.lookup` (apps/steps/readers.py): the runs a person
should look at, read with her own rights through `run_list_for_user`. Registered in `RunsConfig.ready()`."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.db.models.functions import Coalesce
from django.urls import reverse
from django.utils import timezone
from django.utils.timesince import timesince

from apps.runs.models import Incident, Run, StepRun
from apps.runs.selectors import run_list_for_user
from apps.steps.readers import Reading

# A run waiting on a person this long needs someone's attention; shorter waits are the normal course of work.
LONG_WAIT = timedelta(days=1)
# A failure older than this is history, not something to act on now.
RECENT_FAILURES = timedelta(days=7)
# What a step waits for when a person holds it: an approval (a step's, or an agent tool call's) or a confirmation.
PEOPLE_WAITS = ("approval", "confirm")
REASONS = ("incident", "failed", "waiting_on_people")


def _first_line(text: str, limit: int = 160) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= limit else f"{line[: limit - 1]}…"


def runs_needing_attention(user_id: int, params: dict[str, Any]) -> Reading:
    """Live runs she may see that need someone: an open incident first, then failures of the last 7 days that
    nobody restarted, then runs whose step has waited on a person for more than a day; each group oldest first,
    each run once (under its most pressing reason). The asking workflow's own runs are left out."""
    user = get_user_model().objects.filter(pk=user_id, is_active=True).first()
    if user is None:
        return {"items": [], "summary": "There is no active account to look runs up for."}
    limit = int(params["limit"])
    now = timezone.now()
    visible = run_list_for_user(user).filter(mode=Run.Mode.LIVE)
    if params.get("workflow_id"):
        visible = visible.exclude(workflow_id=params["workflow_id"])
    visible_ids = visible.order_by().values("pk")

    found: dict[int, dict[str, Any]] = {}

    def add(run: Run, reason: str, state: str, since: datetime | None) -> None:
        if run.pk in found or len(found) >= limit:
            return
        since = since or run.created_at
        found[run.pk] = {
            "run_id": run.pk,
            "name": f"Run #{run.pk}",
            "workflow": run.workflow.name,
            "reason": reason,
            "status": state,
            "since": since.isoformat(),
            "when": f"{timesince(since, now, depth=2)} ago",
            "link": reverse("runs:detail", args=[run.pk]),
        }

    incidents = (
        Incident.objects.filter(resolved_at__isnull=True, run__in=visible_ids)
        .select_related("run__workflow", "step_run")
        .order_by("opened_at", "pk")[: limit * 2]
    )
    for incident in incidents:
        step = incident.step_run.name or incident.step_run.step_key
        add(
            incident.run,
            "incident",
            f'stopped on an incident at "{step}": {_first_line(incident.reason)}',
            incident.opened_at,
        )
    failed = (
        Run.objects.filter(
            pk__in=visible_ids, status=Run.Status.FAILED, finished_at__gte=now - RECENT_FAILURES, restarts__isnull=True
        )
        .select_related("workflow")
        .order_by("finished_at", "pk")[: limit * 2]
    )
    for run in failed:
        add(run, "failed", f"failed: {_first_line(run.error) or 'no reason recorded'}", run.finished_at)
    waiting = (
        StepRun.objects.annotate(waiting_since=Coalesce("started_at", "queued_at"))
        .filter(
            run__in=visible_ids,
            run__status__in=[Run.Status.PENDING, Run.Status.RUNNING],
            state=StepRun.State.WAITING,
            waiting_for__in=PEOPLE_WAITS,
            waiting_since__lt=now - LONG_WAIT,
        )
        .select_related("run__workflow")
        .order_by("waiting_since", "pk")[: limit * 2]
    )
    for step_run in waiting:
        since = step_run.waiting_since
        what = "a confirmation" if step_run.waiting_for == "confirm" else "a decision"
        label = step_run.name or step_run.step_key
        add(
            step_run.run,
            "waiting_on_people",
            f'waiting for {what} at "{label}" for {timesince(since, now, depth=2) if since else "a while"}',
            since,
        )
    items = list(found.values())
    if not items:
        return {
            "items": [],
            "summary": "No run you can see needs attention: nothing failed or stopped on an "
            "incident in the last 7 days, and nothing has waited on people for more than a day.",
        }
    counts = {reason: sum(1 for item in items if item["reason"] == reason) for reason in REASONS}
    parts = [
        f"{counts['incident']} stopped on an incident" if counts["incident"] else "",
        f"{counts['failed']} failed" if counts["failed"] else "",
        f"{counts['waiting_on_people']} waiting on people for more than a day" if counts["waiting_on_people"] else "",
    ]
    listed = ", ".join(part for part in parts if part)
    noun = "run needs" if len(items) == 1 else "runs need"
    more = f" (the first {limit} are listed; there may be more)" if len(items) >= limit else ""
    return {"items": items, "summary": f"{len(items)} {noun} attention: {listed}{more}."}
