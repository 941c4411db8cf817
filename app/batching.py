"""Group concurrent requests' photos into batches, so the models see few large calls, not many.

Requests `submit` one item each and await its result. One collector task takes the first waiting
item and everything already queued behind it (up to `max_batch`), and runs the batch in a worker
thread (off the event loop). Each worker has its own function (its own copy of the models) and
its own thread, and runs one batch at a time; with several, a batch goes to whichever worker is
free, so one batch's preprocessing and inference overlap another's. While every worker is busy,
newcomers queue up, so under load the next batch is taken full and at once.

It never waits for company that is not coming: a request that finds a worker idle and nobody
queued runs at once. Only under steady load (the last batch held several requests and ended
less than `max_wait` ago) does it wait, at most `max_wait`, for as many requests as the last
batch held: closed-loop clients answered together come back a few milliseconds apart, and one
batch of them costs less than a lone first one followed by the rest.

A batch function may answer an item with an exception instead of a result (a photo it refuses):
that request alone raises it. A batch that raises is retried one item at a time, so each request
gets its own result or its own exception: one bad item never fails its batch-mates.

`idle` tells a caller whether an item submitted now would run at once and alone, so it can hand
the worker more of that request's work (the service's lone-photo path: one hand-off, not three).
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


# An item's answer: its result, or the exception its request alone raises.
BatchFn = Callable[[list[T]], Sequence[R | Exception]]


class MicroBatcher(Generic[T, R]):
    """`fn(items) -> results` (same length, same order), called in batches in worker threads:
    one worker per function given (a list: one per copy of the models), each running one batch
    at a time."""

    def __init__(
        self,
        fn: BatchFn[T, R] | Sequence[BatchFn[T, R]],
        *,
        max_batch: int = 16,
        max_wait: float = 0.005,
        on_batch: Callable[[int, float], None] | None = None,
        name: str = "batcher",
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.fns: list[BatchFn[T, R]] = list(fn) if isinstance(fn, Sequence) else [fn]
        if not self.fns:
            raise ValueError("at least one worker function is needed")
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.on_batch = on_batch
        # One thread per worker, for good: a shared pool would hand a copy of the models to
        # whichever of its threads woke first, and onnxruntime then runs from a thread whose
        # caches hold the other copy (measured after a burst at concurrency 8: a lone photo's
        # models 10% slower on two cores, for as long as the service ran).
        self._executors = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-{worker}")
            for worker in range(len(self.fns))
        ]
        self._queue: asyncio.Queue[_Job[T, R]] | None = None
        self._free: asyncio.Queue[int] | None = None  # the workers not running a batch
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._holding = False  # the collector holds jobs it has not handed to a worker yet
        # The load the last batch saw: its size and when it ended (loop time).
        self._last_size = 0
        self._last_end = float("-inf")

    @property
    def workers(self) -> int:
        return len(self.fns)

    @property
    def idle(self) -> bool:
        """Whether an item submitted now would run at once and alone: a worker free, nothing
        queued or being gathered, no steady load to wait for. A hint, not a promise: another
        request may be submitted first and share the batch."""
        if self._queue is None or self._free is None or self._task is None or self._task.done():
            return False
        return (
            not self._holding
            and self._queue.empty()
            and not self._free.empty()
            and not self._steady()
        )

    def start(self) -> None:
        """Start the collector on the running loop."""
        self._queue = asyncio.Queue()
        # Last in, first out: a lone request goes to the worker that ran the last batch,
        # whose threads are awake and whose models are in the caches.
        self._free = asyncio.LifoQueue()
        for worker in range(len(self.fns)):
            self._free.put_nowait(worker)
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
            queued = [self._queue.get_nowait() for _ in range(self._queue.qsize())]
            _fail(queued, BatcherClosedError("the service is shutting down"))
        # Batches already running finish and answer their requests.
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        for executor in self._executors:
            executor.shutdown(wait=True)

    async def _collect(self) -> None:
        assert self._queue is not None and self._free is not None
        while True:
            batch = [await self._queue.get()]
            self._holding = True
            try:
                # While every worker is busy, newcomers queue behind it: the next batch.
                worker = await self._free.get()
                await self._gather(batch)
            except asyncio.CancelledError:
                # Closing: the jobs held here are in no queue that close() could drain.
                _fail(batch, BatcherClosedError("the service is shutting down"))
                raise
            # Requests whose clients went away are not worth the models' time.
            batch = [job for job in batch if not job.future.done()]
            self._holding = False
            if not batch:
                self._free.put_nowait(worker)
                continue
            task = asyncio.get_running_loop().create_task(self._run(batch, worker))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _steady(self) -> bool:
        """Steady load: the last batch held several requests and ended within max_wait."""
        loop = asyncio.get_running_loop()
        return self._last_size > 1 and loop.time() - self._last_end <= self.max_wait

    async def _gather(self, batch: list[_Job[T, R]]) -> None:
        """Add what is queued to `batch`; under steady load, wait for as many as last time,
        for at most max_wait."""
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        self._take_waiting(batch)
        if not self._steady():
            return
        expected = min(self._last_size, self.max_batch)
        deadline = loop.time() + self.max_wait
        while len(batch) < expected:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                return
            self._take_waiting(batch)

    def _take_waiting(self, batch: list[_Job[T, R]]) -> None:
        """Add what is already queued, without yielding, up to max_batch."""
        assert self._queue is not None
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                return

    async def _run(self, batch: list[_Job[T, R]], worker: int) -> None:
        assert self._free is not None
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            outcomes = await loop.run_in_executor(
                self._executors[worker], self._call, batch, worker
            )
        except BaseException as exc:
            # Cancelled at shutdown, or the executor is gone: the batch's requests learn of it.
            _fail(batch, BatcherClosedError(f"the batch did not run: {exc!r}"))
            raise
        finally:
            self._free.put_nowait(worker)
            self._last_size, self._last_end = len(batch), loop.time()
            if self.on_batch is not None:
                self.on_batch(len(batch), time.perf_counter() - started)
        for job, outcome in zip(batch, outcomes, strict=True):
            if job.future.done():
                continue
            if isinstance(outcome, Exception):
                job.future.set_exception(outcome)
            else:
                job.future.set_result((outcome, started - job.queued))

    def _call(self, batch: list[_Job[T, R]], worker: int) -> list[R | Exception]:
        """In a worker thread: the batch's answers, or, when the batch fails, each item's own."""
        fn = self.fns[worker]
        try:
            return list(self._checked(fn, [job.item for job in batch]))
        except Exception as exc:
            if len(batch) == 1:
                return [exc]
        # Which item broke the batch is unknown: each one alone says.
        outcomes: list[R | Exception] = []
        for job in batch:
            try:
                outcomes += self._checked(fn, [job.item])
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    @staticmethod
    def _checked(fn: BatchFn[T, R], items: list[T]) -> Sequence[R | Exception]:
        results = fn(items)
        if len(results) != len(items):
            raise RuntimeError(f"batch of {len(items)} gave {len(results)} results")
        return results


def _fail(jobs: list[_Job[T, R]], error: Exception) -> None:
    """Answer every job not yet answered with `error`."""
    for job in jobs:
        if not job.future.done():
            job.future.set_exception(error)
