"""Celery tasks of the dashboards app: thin doors into the rollup job, safe to run twice."""

from __future__ import annotations

from celery import shared_task

from apps.dashboards.rollups import rollups_refresh

ROLLUP_TASK = "dashboards.rollups_refresh"


@shared_task(name=ROLLUP_TASK, acks_late=False, ignore_result=True)
def refresh_rollups() -> int:
    """Rebuild the rollup days touched since the last run (apps.dashboards.rollups.rollups_refresh); returns how
    many days were rebuilt. A job claims a lease on its state row, so an overlapping beat finds it running and
    returns at once."""
    return rollups_refresh().last_days
