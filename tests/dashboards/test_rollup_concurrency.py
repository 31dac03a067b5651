"""The rollup job beside other work on the same rows. Rebuilds of the same days at the same time (the periodic job
alongside `dashboards_rebuild`) take turns per day: both succeed and leave exactly the rows a single rebuild
leaves. A long job commits day by day, never holds up a manager changing an endpoint's price, and an overlapping
beat returns at once."""

from __future__ import annotations

import threading
import time
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from apps.dashboards.models import (
    EndpointDayRollup,
    QueueDayRollup,
    RollupRebuildRequest,
    RollupState,
    WorkflowDayRollup,
)
from apps.dashboards.rollups import ROLLUP_DAY_LOCK, rollups_rebuild, rollups_refresh
from apps.dashboards.selectors import overview_for_user
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


def _hold_day_lock(day: date, held: threading.Event, release: threading.Event) -> None:
    """Hold `day`'s rollup lock (as a manual rebuild of that day would) until told to let go."""
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [ROLLUP_DAY_LOCK, day.toordinal()])
            held.set()
            release.wait(timeout=60)
    finally:
        connection.close()


def _refresh(now: Any, errors: list[BaseException]) -> None:
    try:
        rollups_refresh(now=now)
    except BaseException as error:
        errors.append(error)
    finally:
        connection.close()


def _wait_for(condition: Any, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"waited {seconds} s for {what}"
        time.sleep(0.1)


def test_a_long_job_commits_each_day_and_never_holds_up_a_price_change(
    analyst: Any, reviewer: Any, manager: Any
) -> None:
    data = dataset_build(owner=analyst, reviewer=reviewer)  # rows built by a manual rebuild, no job has run yet
    blocked = data.today - timedelta(days=10)
    job_started = timezone.now()
    held, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold_day_lock, args=(blocked, held, release))
    errors: list[BaseException] = []
    job = threading.Thread(target=_refresh, args=(data.now, errors))
    holder.start()
    try:
        assert held.wait(timeout=30)
        job.start()  # the first job: a backfill of every day since the first run, stuck at `blocked`
        _wait_for(lambda: RollupState.objects.filter(rebuild_from=blocked).exists(), "the job to reach the held day")
        # The days before it are committed already, the ones after it not yet rebuilt.
        rebuilt = WorkflowDayRollup.objects.filter(built_at__gte=job_started)
        assert rebuilt.exists() and not rebuilt.filter(day__gte=blocked).exists()
        assert WorkflowDayRollup.objects.filter(day__gt=blocked, built_at__lt=job_started).exists()

        # An overlapping beat finds the job's lease and returns at once, rebuilding nothing.
        beat_started = time.monotonic()
        assert rollups_refresh(now=data.now).lease_until is not None
        assert time.monotonic() - beat_started < 5

        # A manager changes the cloud endpoint's price meanwhile: the request neither waits nor fails.
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '5s'")
        client = Client()
        client.force_login(manager)
        url = reverse("dashboards:inputs-endpoint", args=[data.cloud.name])
        response = client.post(url, {"self_hosted": "on", "gpu_hourly_price": "3.60"})
        assert response.status_code == 302
        assert RollupRebuildRequest.objects.count() == 1
    finally:
        release.set()
        holder.join(timeout=30)
        job.join(timeout=120)
    assert not job.is_alive() and errors == []
    state = RollupState.objects.get()
    assert state.rebuild_from is None and state.lease_until is None and state.last_days >= 41
    # The job started before the request, so it leaves it to the next run, which applies the new price.
    assert RollupRebuildRequest.objects.count() == 1
    rollups_refresh(now=data.now)
    assert not RollupRebuildRequest.objects.exists()
    figures = {kpi.key: kpi.value for kpi in overview_for_user(manager, data.filter_x(), now=data.now).kpis}
    assert figures["run_cost"] == Decimal("35.02")
