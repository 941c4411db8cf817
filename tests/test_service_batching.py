"""The micro-batcher: concurrent submissions share a call, a lone one waits at most max_wait,
results go back to their own callers, and a failing batch fails only its own requests."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from app.batching import BatcherClosedError, MicroBatcher


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_concurrent_requests_are_grouped_and_answered_in_order() -> None:
    calls: list[list[int]] = []
    threads: set[str] = set()

    def double(items: list[int]) -> list[int]:
        calls.append(items)
        threads.add(threading.current_thread().name)
        time.sleep(0.02)  # while this runs, newcomers queue for the next batch
        return [2 * i for i in items]

    async def main() -> list[tuple[int, float]]:
        batcher = MicroBatcher(double, max_batch=8, max_wait=0.05, name="t")
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(i) for i in range(20)))
        finally:
            await batcher.close()

    results = run(main())
    assert [r for r, _ in results] == [2 * i for i in range(20)]
    assert all(waited >= 0 for _, waited in results)
    assert sorted(i for call in calls for i in call) == list(range(20))
    assert max(len(c) for c in calls) == 8 and len(calls) <= 4
    assert threads == {next(iter(threads))} and "t" in next(iter(threads))


def test_a_lone_request_waits_at_most_max_wait() -> None:
    sizes: list[int] = []

    async def main() -> float:
        batcher = MicroBatcher(lambda xs: xs, max_batch=64, max_wait=0.01)
        batcher.on_batch = lambda size, seconds: sizes.append(size)
        batcher.start()
        start = time.perf_counter()
        await batcher.submit("x")
        elapsed = time.perf_counter() - start
        await batcher.close()
        return elapsed

    assert run(main()) < 0.5 and sizes == [1]


def test_a_failing_batch_fails_its_requests_and_the_batcher_goes_on() -> None:
    def fragile(items: list[int]) -> list[int]:
        if -1 in items:
            raise ValueError("bad batch")
        return items

    async def main() -> None:
        batcher = MicroBatcher(fragile, max_batch=4, max_wait=0.0)
        batcher.start()
        with pytest.raises(ValueError, match="bad batch"):
            await batcher.submit(-1)
        assert await batcher.submit(5) == (5, pytest.approx(0, abs=1))
        await batcher.close()
        with pytest.raises(BatcherClosedError):
            await batcher.submit(1)

    run(main())
