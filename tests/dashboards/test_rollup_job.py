"""The rollup job's doors: the periodic task in a real Celery worker, and `manage.py dashboards_rebuild`."""

from __future__ import annotations

import io
import time
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from apps.dashboards.models import RollupState, WorkflowDayRollup
from apps.dashboards.selectors import overview_for_user
from apps.dashboards.tasks import ROLLUP_TASK
from tests.dashboards.dataset import EXPECTED, dataset_build


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_the_periodic_task_builds_the_rollups_in_a_worker(
    celery_worker_process: None, analyst: Any, reviewer: Any, manager: Any
) -> None:
    from workers.celery import app

    data = dataset_build(owner=analyst, reviewer=reviewer, rollups=False)
    assert not WorkflowDayRollup.objects.exists()
    app.send_task(ROLLUP_TASK)
    deadline = time.monotonic() + 60
    while not RollupState.objects.filter(last_run_at__isnull=False).exists():
        assert time.monotonic() < deadline, "the worker did not run the rollup job within 60 s"
        time.sleep(0.2)
    state = RollupState.objects.get()
    assert state.watermark is not None and state.last_days >= 41, "the first run rebuilds every day there is"
    figures = {kpi.key: kpi.value for kpi in overview_for_user(manager, data.filter_x(), now=data.now).kpis}
    assert figures["cases"] == EXPECTED["cases"] and figures["roi"] == EXPECTED["roi"]


@pytest.mark.django_db
def test_the_rebuild_command_rebuilds_a_range_and_refuses_bad_dates(analyst: Any, reviewer: Any) -> None:
    data = dataset_build(owner=analyst, reviewer=reviewer, rollups=False)
    out = io.StringIO()
    call_command("dashboards_rebuild", "--since", str(data.today - timedelta(days=30)), stdout=out)
    assert "Rebuilt 31 days" in out.getvalue()
    assert sum(WorkflowDayRollup.objects.filter(workflow=data.claims).values_list("cases", flat=True)) == 7
    with pytest.raises(CommandError, match="not a date"):
        call_command("dashboards_rebuild", "--since", "yesterday")
    with pytest.raises(CommandError, match="before"):
        call_command("dashboards_rebuild", "--since", "2026-12-01", "--until", "2026-11-01")
