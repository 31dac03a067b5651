"""The asynchronous step executor: LLM steps as coroutines on one event loop per worker process.

A thread per step (Celery's thread pool) spent most of its life asleep on a model's stream, yet every
thread's bookkeeping competed for the process's one GIL, and the pool's size was the process's limit on
steps in flight. Here Celery only rings the bell: its task hands the step to this process's engine and
returns once the step is claimed (the claim, not Celery's acknowledgement, is what makes it durable). The
engine claims the steps whose doorbells arrive within a few milliseconds in one statement, then runs each
as a coroutine on the process's inference loop (apps.inference.runtime): its model call streams on the
loop, and its database work (set-up, call records, its result) runs on a small pool of threads with their
own connections. The process's lease renewer keeps every running step's lease; the endpoints' in-flight
limits hold across processes as before.

A process runs at most AIOS_INFERENCE_CONCURRENCY such steps at once: past that, the doorbell waits, and
the broker keeps the rest for other processes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import socket
import threading
import time
from collections.abc import Coroutine
from typing import Any

from celery.signals import worker_shutting_down
from django.conf import settings

from apps.core.database import db_call, db_executor
from apps.inference import runtime
from apps.runs.executor import Chain, step_run_execute_async
from apps.runs.leases import renewer
from apps.runs.lifecycle import step_runs_claim
from apps.runs.models import StepRun
from apps.steps.registry import step_type_get

logger = logging.getLogger(__name__)

# Doorbells that arrive within this long of the first are claimed together.
BATCH_SECONDS = 0.002
# A doorbell gives up waiting for its claim after this long (the database is away); the broker redelivers it.
CLAIM_WAIT_SECONDS = 60.0


class AsyncEngine:
    """This process's asynchronous step executor (one per process, made on first use)."""

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._waiting: list[tuple[int, concurrent.futures.Future[bool]]] = []
        self._batch_due = False
        self._slots = threading.BoundedSemaphore(settings.AIOS_INFERENCE_CONCURRENCY)
        self._db = concurrent.futures.ThreadPoolExecutor(
            max_workers=settings.AIOS_INFERENCE_DB_THREADS, thread_name_prefix="step-db"
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self.worker = f"{socket.gethostname()}:{os.getpid()}:async"

    def submit(self, step_run_id: int) -> bool:
        """From a Celery thread: have the step claimed and run here. Waits while the process already runs its
        limit of steps, then until the claim committed; returns whether this process claimed the step."""
        self._slots.acquire()
        future: concurrent.futures.Future[bool] = concurrent.futures.Future()
        with self._lock:
            self._waiting.append((step_run_id, future))
            first, self._batch_due = not self._batch_due, True
        if first:
            loop = runtime.event_loop()
            loop.call_soon_threadsafe(loop.call_later, BATCH_SECONDS, self._spawn_claims)
        try:
            claimed = future.result(timeout=CLAIM_WAIT_SECONDS)
        except concurrent.futures.TimeoutError:
            # Given up (the database is away): if the claim still lands, the step runs without this slot.
            if future.cancel():
                self._slots.release()
            raise
        except BaseException:
            self._slots.release()
            raise
        if not claimed:
            self._slots.release()
        return claimed

    def drain(self, timeout: float) -> None:
        """At a warm shutdown: let the steps in flight finish for up to `timeout` seconds. What is still running
        after that is left to its lease."""
        deadline = time.monotonic() + timeout
        while self._tasks and time.monotonic() < deadline:
            time.sleep(0.1)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)  # a task nothing refers to may be collected before it ran
        task.add_done_callback(self._tasks.discard)

    def _spawn_claims(self) -> None:
        self._spawn(self._claim_waiting())

    async def _claim_waiting(self) -> None:
        with self._lock:
            waiting, self._waiting, self._batch_due = self._waiting, [], False
        try:
            with db_executor(self._db):
                steps = await db_call(step_runs_claim, step_run_ids=[pk for pk, _ in waiting], worker=self.worker)
        except Exception as error:
            for _, future in waiting:
                if future.set_running_or_notify_cancel():
                    future.set_exception(error)
            return
        unclaimed = {step_run.pk: step_run for step_run in steps}
        for pk, future in waiting:
            # Two doorbells for one step (a re-sent message) can meet in one batch: one slot runs it, the other
            # is given back.
            step_run = unclaimed.pop(pk, None)
            if future.set_running_or_notify_cancel():
                future.set_result(step_run is not None)
                if step_run is not None:
                    self._spawn(self._run(step_run, owns_slot=True))
            elif step_run is not None:  # its doorbell gave up waiting and gave its slot back
                self._spawn(self._run(step_run, owns_slot=self._slots.acquire(blocking=False)))

    async def _run(self, first: StepRun, *, owns_slot: bool) -> None:
        """Run a claimed step, then the successors claimed for this process in its result transactions."""
        step_run: StepRun | None = first
        chain = Chain(queue=step_type_get(first.step_type).queue, worker=self.worker)
        try:
            with db_executor(self._db):
                while step_run is not None:
                    chain.steps += 1
                    try:
                        following = await step_run_execute_async(step_run, chain)
                    finally:
                        renewer.unregister(step_run)
                    step_run = following
        except Exception:
            # The database failed under the step, or recording its outcome failed past its retries: the step's
            # lease lapses and the sweeper hands it on; nothing else is lost.
            logger.exception("step run %s stopped without a recorded outcome", step_run.pk if step_run else "?")
        finally:
            if owns_slot:
                self._slots.release()


_engine: AsyncEngine | None = None
_engine_lock = threading.Lock()


def async_engine() -> AsyncEngine:
    """This process's engine (a forked child makes its own)."""
    global _engine
    with _engine_lock:
        if _engine is None or _engine._pid != os.getpid():
            _engine = AsyncEngine()
        return _engine


@worker_shutting_down.connect
def _drain_at_shutdown(**kwargs: Any) -> None:
    # A warm stop (the supervisor's SIGTERM) waits for running Celery tasks, but a step handed to this executor
    # is no longer one: wait for those too, as long as Celery's soft shutdown allows.
    if _engine is not None and _engine._pid == os.getpid():
        _engine.drain(settings.CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT)
