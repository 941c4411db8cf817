"""Group concurrent requests' photos into batches, so a GPU sees few large calls, not many small.

Requests `submit` one item each and await its result. One collector task takes the first waiting
item, then keeps taking until the batch is full (`max_batch`) or `max_wait` has passed since that
first item, and runs the batch in a dedicated worker thread (off the event loop; one thread, so
the models see one call at a time). While a batch runs, newcomers queue up, so under load the
next batch is taken full and at once: throughput grows with load, and a lone request waits at
most `max_wait`.
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
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                # Take whatever is already waiting without yielding to the timer.
                try:
                    batch.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            # Requests whose clients went away are not worth the GPU's time.
            batch = [job for job in batch if not job.future.done()]
            if batch:
                await self._run(batch)

    async def _run(self, batch: list[_Job[T, R]]) -> None:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._executor, self.fn, [j.item for j in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch of {len(batch)} gave {len(results)} results")
        except Exception as exc:
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        finally:
            if self.on_batch is not None:
                self.on_batch(len(batch), time.perf_counter() - started)
        for job, result in zip(batch, results, strict=True):
            if not job.future.done():
                job.future.set_result((result, started - job.queued))
