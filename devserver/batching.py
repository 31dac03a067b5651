"""Continuous batching for the development server: one scheduler paces every generating request.

The model mirrors TGI's router loop closely enough for throughput and latency to behave like a real
server under load:

- An admitted request waits in a FIFO queue until one of `max_batch_size` batch slots is free.
- Holding a slot, it first spends `ttft_ms` in prefill (its own delay, running beside the batch), which
  ends with its first token.
- It then joins the decode batch at the next step. A decode step over B sequences takes
  `tpot_ms * (1 + batch_overhead * (B - 1))` and advances every sequence in it by one token, so aggregate
  tokens per second grow with concurrency (almost linearly for a small overhead) up to `max_batch_size`.
- Beyond `max_batch_size`, more concurrency adds queueing (a longer time to first token), not throughput.

One asyncio task (the scheduler) owns all timing: handlers only wait on their sequence's events. The
scheduler runs while there is work and exits when idle, so an idle server holds no timers.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable

from .config import DevServerConfig

# Timer lateness a back-to-back decode step absorbs (see `_advance_step`).
_CATCH_UP_SECONDS = 0.005


class Sequence:
    """One request's place in the batch: how many tokens it will produce, and how many it has.

    `emitted` only grows; `changed` is set whenever it grows or the sequence finishes, so a consumer
    clears it, reads `emitted`, and waits. `done` resolves when the last token (or, for a prefill-only
    sequence of 0 tokens, the prefill) is out, or when the sequence is cancelled.
    """

    def __init__(self, tokens: int, reserved_tokens: int, on_admit: Callable[[], None] | None) -> None:
        self.tokens = tokens
        self.reserved_tokens = reserved_tokens
        self.emitted = 0
        self.on_admit = on_admit
        self.changed = asyncio.Event()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.prefill_ready = 0.0
        self.cancelled = False

    @property
    def finished(self) -> bool:
        return self.done.done()

    def _emit(self) -> None:
        self.emitted += 1
        self.changed.set()
        if self.emitted >= self.tokens:
            self._finish()

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)
        self.changed.set()


class BatchScheduler:
    """The single pacing loop of one server (one per application, living on its event loop)."""

    def __init__(self, config: DevServerConfig) -> None:
        self.config = config
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.prefilling: list[Sequence] = []
        self.decoding: list[Sequence] = []
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        # The batch of the decode step in progress and when that step ends.
        self._step: list[Sequence] = []
        self._step_end: float | None = None

    # ----------------------------------------------------------------------------------------------
    # Figures (read by /metrics)

    @property
    def queue_size(self) -> int:
        return len(self.waiting)

    @property
    def batch_size(self) -> int:
        return len(self.prefilling) + len(self.decoding)

    @property
    def batch_tokens(self) -> int:
        return sum(s.reserved_tokens for s in (*self.prefilling, *self.decoding))

    def step_seconds(self, batch: int) -> float:
        """Duration of one decode step over `batch` sequences."""
        return self.config.tpot_ms / 1000.0 * (1.0 + self.config.batch_overhead * max(batch - 1, 0))

    # ----------------------------------------------------------------------------------------------
    # Handlers' side

    def submit(self, tokens: int, *, reserved_tokens: int = 0, on_admit: Callable[[], None] | None = None) -> Sequence:
        """Queue a sequence that will produce `tokens` tokens (0: prefill only). Never blocks.

        `on_admit` runs (on the event loop) when the sequence gets its batch slot: the end of its queue time.
        """
        sequence = Sequence(tokens, reserved_tokens, on_admit)
        self.waiting.append(sequence)
        self._kick()
        return sequence

    def cancel(self, sequence: Sequence) -> None:
        """Take `sequence` out wherever it is (client gone, fault), freeing its slot; idempotent."""
        if sequence.finished:
            return
        sequence.cancelled = True
        for group in (self.waiting, self.prefilling, self.decoding):
            if sequence in group:
                group.remove(sequence)
        sequence._finish()
        self._kick()

    def _kick(self) -> None:
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="aios-devserver-batcher")

    # ----------------------------------------------------------------------------------------------
    # The loop

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self.waiting or self.prefilling or self.decoding:
            self._wake.clear()
            now = loop.time()
            self._admit(now)
            self._finish_prefills(now)
            self._advance_step(now)
            deadlines = [s.prefill_ready for s in self.prefilling]
            if self._step_end is not None:
                deadlines.append(self._step_end)
            if not deadlines:
                # Only possible with nothing to do or a queue behind a full batch; both end with a wake-up.
                if not (self.waiting or self.prefilling or self.decoding):
                    break
                await self._wake.wait()
                continue
            delay = min(deadlines) - loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=delay)
        self._step = []
        self._step_end = None

    def _admit(self, now: float) -> None:
        prefill = self.config.ttft_ms / 1000.0
        while self.waiting and self.batch_size < self.config.max_batch_size:
            sequence = self.waiting.popleft()
            sequence.prefill_ready = now + prefill
            self.prefilling.append(sequence)
            if sequence.on_admit is not None:
                sequence.on_admit()

    def _finish_prefills(self, now: float) -> None:
        for sequence in [s for s in self.prefilling if s.prefill_ready <= now]:
            self.prefilling.remove(sequence)
            if sequence.tokens <= 0:
                sequence._finish()
                continue
            # Prefill produces the first token.
            sequence._emit()
            if not sequence.finished:
                # Joins at the next decode step, as new entries join TGI's running batch.
                self.decoding.append(sequence)
        # Sequences that finished in prefill (one token, or none) freed their slots.
        self._admit(now)

    def _advance_step(self, now: float) -> None:
        if self._step_end is not None and now >= self._step_end:
            for sequence in self._step:
                if sequence in self.decoding:
                    sequence._emit()
                    if sequence.finished:
                        self.decoding.remove(sequence)
            step_end = self._step_end
            self._step, self._step_end = [], None
            self._admit(now)
            if self.decoding:
                # Back-to-back steps are timed from the previous step's end, so the usual timer lateness
                # does not add up over a long generation; after a longer stall (a busy loop) the next step
                # starts now instead, so tokens never arrive in a catch-up burst.
                self._start_step(step_end if now - step_end <= _CATCH_UP_SECONDS else now)
                return
        if self._step_end is None and self.decoding:
            self._start_step(now)

    def _start_step(self, start: float) -> None:
        self._step = list(self.decoding)
        self._step_end = start + self.step_seconds(len(self._step))
