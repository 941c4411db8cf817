"""Group concurrent requests' photos into batches, so a GPU sees few large calls, not many small.

Requests `submit` one item each and await its result. One collector task takes the first waiting
item and everything already queued behind it (up to `max_batch`), and runs the batch in a
dedicated worker thread (off the event loop; one thread, so the models see one call at a time).
While a batch runs, newcomers queue up, so under load the next batch is taken full and at once.

It never waits for company that is not coming: a request that finds the worker idle and nobody
queued runs at once. Only under steady load (the last batch held several requests and ended
less than `max_wait` ago) does it wait, at most `max_wait`, for as many requests as the last
batch held: closed-loop clients answered together come back a few milliseconds apart, and one
batch of them costs less than a lone first one followed by the rest.

A batch that raises is retried one item at a time, so each request gets its own result or its
own exception: one bad item never fails its batch-mates.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["BatcherClosedError", "MicroBatcher"]

T = TypeVar("T")
R = TypeVar("R")


class BatcherClosedError(RuntimeError):
    """The service is shutting down."""


@dataclass
class _Job(Generic[T, R]):
    item: T
    future: asyncio.Future[tuple[R, float]]  # the result and the seconds it waited to run
    queued: float


class MicroBatcher(Generic[T, R]):
    """`fn(items) -> results` (same length, same order), called in batches in a worker thread."""

    def __init__(
        self,
        fn: Callable[[list[T]], Sequence[R]],
        *,
        max_batch: int = 16,
        max_wait: float = 0.005,
        on_batch: Callable[[int, float], None] | None = None,
        name: str = "batcher",
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.fn = fn
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.on_batch = on_batch
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._queue: asyncio.Queue[_Job[T, R]] | None = None
        self._task: asyncio.Task[None] | None = None
        # The load the last batch saw: its size and when it ended (loop time).
        self._last_size = 0
        self._last_end = float("-inf")

    def start(self) -> None:
        """Start the collector on the running loop."""
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._collect(), name="batcher")

    async def submit(self, item: T) -> tuple[R, float]:
        """The result for `item`, and the seconds it waited in the queue before its batch ran."""
        if self._queue is None or self._task is None or self._task.done():
            raise BatcherClosedError("the service is not accepting work")
        future: asyncio.Future[tuple[R, float]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(item, future, time.perf_counter()))
        return await future

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._queue is not None:
            while not self._queue.empty():
                job = self._queue.get_nowait()
                if not job.future.done():
                    job.future.set_exception(BatcherClosedError("the service is shutting down"))
        self._executor.shutdown(wait=True)

    async def _collect(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            batch = [first]
            self._take_waiting(batch)
            steady = self._last_size > 1 and loop.time() - self._last_end <= self.max_wait
            if steady:
                # Expect as many as last time, for at most max_wait.
                expected = min(self._last_size, self.max_batch)
                deadline = loop.time() + self.max_wait
                while len(batch) < expected:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                    except TimeoutError:
                        break
                    self._take_waiting(batch)
            # Requests whose clients went away are not worth the GPU's time.
            batch = [job for job in batch if not job.future.done()]
            if batch:
                await self._run(batch)
                self._last_size, self._last_end = len(batch), loop.time()

    def _take_waiting(self, batch: list[_Job[T, R]]) -> None:
        """Add what is already queued, without yielding, up to max_batch."""
        assert self._queue is not None
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                return

    async def _run(self, batch: list[_Job[T, R]]) -> None:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            outcomes = await loop.run_in_executor(self._executor, self._call, batch)
        finally:
            if self.on_batch is not None:
                self.on_batch(len(batch), time.perf_counter() - started)
        for job, outcome in zip(batch, outcomes, strict=True):
            if job.future.done():
                continue
            if isinstance(outcome, _Failed):
                job.future.set_exception(outcome.error)
            else:
                job.future.set_result((outcome, started - job.queued))

    def _call(self, batch: list[_Job[T, R]]) -> list[R | _Failed]:
        """In the worker: the batch's results, or, when the batch fails, each item's own."""
        try:
            return list(self._checked([job.item for job in batch]))
        except Exception as exc:
            if len(batch) == 1:
                return [_Failed(exc)]
        # Which item broke the batch is unknown: each one alone says.
        outcomes: list[R | _Failed] = []
        for job in batch:
            try:
                outcomes += self._checked([job.item])
            except Exception as exc:
                outcomes.append(_Failed(exc))
        return outcomes

    def _checked(self, items: list[T]) -> Sequence[R]:
        results = self.fn(items)
        if len(results) != len(items):
            raise RuntimeError(f"batch of {len(items)} gave {len(results)} results")
        return results


@dataclass(frozen=True)
class _Failed:
    error: Exception
