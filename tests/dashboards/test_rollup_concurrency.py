"""Rebuilds of the same days at the same time (the periodic job alongside `dashboards_rebuild`, or two overlapping
jobs) take turns per day: both succeed and leave exactly the rows a single rebuild leaves."""

from __future__ import annotations

import threading
from datetime import date, timedelta
from typing import Any

import pytest
from django.db import connection

from apps.dashboards.models import EndpointDayRollup, QueueDayRollup, WorkflowDayRollup
from apps.dashboards.rollups import rollups_rebuild
from tests.dashboards.dataset import dataset_build

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def _snapshot() -> dict[str, list[tuple[Any, ...]]]:
    """Every rollup row, without its id and build time (a rebuild re-inserts rows under new ids, built now)."""
    tables = {"workflow": WorkflowDayRollup, "queue": QueueDayRollup, "endpoint": EndpointDayRollup}
    snapshot = {}
    for name, model in tables.items():
        fields = [f.attname for f in model._meta.concrete_fields if f.attname not in {"id", "built_at"}]
        snapshot[name] = sorted(model.objects.values_list(*fields), key=repr)
    return snapshot


def _rebuild_after(barrier: threading.Barrier, errors: list[BaseException], start: date, end: date) -> None:
    """Wait until every thread is ready, then rebuild; a failure is handed to the test's thread."""
    try:
        barrier.wait(timeout=30)
        rollups_rebuild(start=start, end=end)
    except BaseException as error:
        errors.append(error)
    finally:
        connection.close()


def test_two_rebuilds_of_the_same_days_at_once_both_succeed_and_match_one(analyst: Any, reviewer: Any) -> None:
    data = dataset_build(owner=analyst, reviewer=reviewer, rollups=False)
    start, end = data.today - timedelta(days=45), data.today
    rollups_rebuild(start=start, end=end)
    single = _snapshot()
    assert single["workflow"] and single["queue"] and single["endpoint"], "the dataset fills all three tables"

    for _attempt in range(3):
        barrier = threading.Barrier(3)
        errors: list[BaseException] = []
        threads = [
            threading.Thread(target=_rebuild_after, args=(barrier, errors, start, end)) for _ in range(barrier.parties)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in threads), "a rebuild hung"
        assert errors == [], f"a concurrent rebuild failed: {errors[0]!r}"
        assert _snapshot() == single
