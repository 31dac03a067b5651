"""One lease renewer per worker process, instead of a heartbeat thread per step.

Every step a process executes is registered here while it runs; one thread renews all of their leases with a
single UPDATE every third of the shortest lease (an eager claim's), so a short step costs nothing and a long
one keeps its lease however long it runs. A step missing from the UPDATE's result is no longer this
process's (taken over, cancelled, timed out): it is marked lost, and its result will be refused by its
fencing token anyway.

The renewer survives a database restart: a failed renewal closes its connection and tries again on the next
tick, keeping every registration, so a long LLM step outlives a PostgreSQL restart shorter than its lease.
A process that is stopped (SIGSTOP) or killed renews nothing, and its leases lapse to the sweeper as before.
Renewals commit asynchronously: a lost renewal only makes a lease lapse early, and fencing refuses the stale
worker's result.
"""

from __future__ import annotations

import logging
import os
import threading
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from apps.runs.models import StepRun

logger = logging.getLogger(__name__)


class LeaseRenewer:
    """Renews the leases of the steps this process is executing."""

    def __init__(self) -> None:
        self._steps: dict[int, int] = {}  # step run id -> fencing token
        self._lost: set[int] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0

    @staticmethod
    def interval() -> float:
        return min(settings.AIOS_STEP_LEASE_SECONDS, settings.AIOS_EAGER_LEASE_SECONDS) / 3

    def register(self, step_run: StepRun) -> None:
        with self._lock:
            if self._steps.get(step_run.pk, -1) > step_run.fencing_token:
                return  # a stale attempt's late registration never displaces the current one
            self._steps[step_run.pk] = step_run.fencing_token
            self._lost.discard(step_run.pk)
            # Started on first use in each process: a thread started before a pool forked would not exist in
            # the children.
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._loop, name="lease-renewer", daemon=True)
                self._thread.start()

    def unregister(self, step_run: StepRun) -> None:
        with self._lock:
            if self._steps.get(step_run.pk) == step_run.fencing_token:
                del self._steps[step_run.pk]
            self._lost.discard(step_run.pk)

    def lost(self, step_run: StepRun) -> bool:
        """True once a renewal found the step no longer this process's."""
        with self._lock:
            return step_run.pk in self._lost

    def _loop(self) -> None:
        try:
            while True:
                self._wake.wait(self.interval())
                self._wake.clear()
                self.renew_now()
        finally:  # a daemon thread ends with its process; this only runs if the loop itself broke
            connection.close()

    def renew_now(self) -> None:
        """One renewal of every registered lease (the thread calls this every interval)."""
        with self._lock:
            steps = dict(self._steps)
        if not steps:
            return
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit TO OFF")
                # Rows of many runs: taken in id order with SKIP LOCKED, so a renewal never waits on a run's
                # transaction (the lock-order rule in apps/runs/lifecycle.py) nor stalls on one busy row.
                cursor.execute(
                    "UPDATE runs_steprun SET lease_expires_at = %s WHERE id IN (SELECT id FROM runs_steprun "
                    "WHERE state = %s AND (id, fencing_token) IN (SELECT * FROM unnest(%s::bigint[], "
                    "%s::bigint[])) ORDER BY id FOR UPDATE SKIP LOCKED) RETURNING id",
                    [
                        timezone.now() + timedelta(seconds=settings.AIOS_STEP_LEASE_SECONDS),
                        StepRun.State.RUNNING,
                        list(steps),
                        list(steps.values()),
                    ],
                )
                renewed = {row[0] for row in cursor.fetchall()}
                missing = [pk for pk in steps if pk not in renewed]
                if missing:
                    # Skipped (busy) or gone? Only those no longer running with their token are lost.
                    cursor.execute(
                        "SELECT id FROM runs_steprun WHERE state = %s AND (id, fencing_token) IN "
                        "(SELECT * FROM unnest(%s::bigint[], %s::bigint[]))",
                        [StepRun.State.RUNNING, missing, [steps[pk] for pk in missing]],
                    )
                    renewed.update(row[0] for row in cursor.fetchall())
        except Exception:
            # The database is away (a restart, a network cut): keep every registration and try again on the
            # next tick, with a fresh connection.
            logger.warning("could not renew %s step lease(s); retrying", len(steps), exc_info=True)
            connection.close()
            return
        with self._lock:
            for step_run_id, token in steps.items():
                if step_run_id not in renewed and self._steps.get(step_run_id) == token:
                    del self._steps[step_run_id]
                    self._lost.add(step_run_id)


renewer = LeaseRenewer()
