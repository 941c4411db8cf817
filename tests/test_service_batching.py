"""The micro-batcher: concurrent submissions share a call, a lone one runs at once (max_wait is
for steady load only), results go back to their own callers, and an item that breaks its batch
fails only its own request."""

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


def test_a_lone_request_runs_at_once_not_after_max_wait() -> None:
    sizes: list[int] = []

    async def main() -> None:
        # Were the lone request held for company, it would wait 30 s: the bound is 5 s.
        batcher: MicroBatcher[str, str] = MicroBatcher(lambda xs: xs, max_batch=64, max_wait=30.0)
        batcher.on_batch = lambda size, seconds: sizes.append(size)
        batcher.start()
        try:
            for item in ("x", "y"):
                result, _ = await asyncio.wait_for(batcher.submit(item), timeout=5)
                assert result == item
        finally:
            await batcher.close()

    run(main())
    assert sizes == [1, 1]


def test_under_steady_load_it_waits_for_as_many_as_last_time() -> None:
    sizes: list[int] = []

    async def main() -> None:
        batcher: MicroBatcher[int, int] = MicroBatcher(lambda xs: xs, max_batch=16, max_wait=30.0)
        batcher.on_batch = lambda size, seconds: sizes.append(size)
        batcher.start()
        try:
            await asyncio.gather(*(batcher.submit(i) for i in range(4)))
            # The same four clients come back one, then three 50 ms later: one batch of four.
            first = asyncio.ensure_future(batcher.submit(10))
            await asyncio.sleep(0.05)
            rest = [batcher.submit(i) for i in range(11, 14)]
            results = await asyncio.wait_for(asyncio.gather(first, *rest), timeout=5)
            assert [r for r, _ in results] == [10, 11, 12, 13]
        finally:
            await batcher.close()

    run(main())
    assert sizes == [4, 4]


def test_an_item_that_breaks_its_batch_fails_alone() -> None:
    calls: list[list[int]] = []

    def fragile(items: list[int]) -> list[int]:
        calls.append(items)
        if -1 in items:
            raise ValueError("bad item")
        return [10 * i for i in items]

    async def main() -> list[tuple[int, float] | BaseException]:
        batcher = MicroBatcher(fragile, max_batch=8, max_wait=0.0)
        batcher.start()
        try:
            jobs = [batcher.submit(i) for i in (1, -1, 2, 3)]
            return await asyncio.gather(*jobs, return_exceptions=True)
        finally:
            await batcher.close()

    results = run(main())
    assert [r[0] for r in results if isinstance(r, tuple)] == [10, 20, 30]
    assert isinstance(results[1], ValueError) and str(results[1]) == "bad item"
    # One batch of all four, then each alone to find out whose fault it was.
    assert calls == [[1, -1, 2, 3], [1], [-1], [2], [3]]


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


def test_two_workers_run_two_batches_at_once_each_with_its_own_function() -> None:
    # Each worker's batch waits at a barrier for the other's: were batches run one at a time,
    # the barrier would time out and the requests fail.
    barrier = threading.Barrier(2, timeout=5)
    seen: dict[int, set[str]] = {0: set(), 1: set()}
    busy = [threading.Lock(), threading.Lock()]

    def worker(index: int):  # type: ignore[no-untyped-def]
        def fn(items: list[int]) -> list[tuple[int, int]]:
            # One batch at a time per worker: its models are never called twice at once.
            assert busy[index].acquire(blocking=False), f"worker {index} ran two batches at once"
            try:
                seen[index].add(threading.current_thread().name)
                barrier.wait()
                return [(index, i) for i in items]
            finally:
                busy[index].release()

        return fn

    async def main() -> list[tuple[tuple[int, int], float]]:
        batcher = MicroBatcher([worker(0), worker(1)], max_batch=2, max_wait=0.0)
        assert batcher.workers == 2
        batcher.start()
        try:
            return await asyncio.wait_for(
                asyncio.gather(*(batcher.submit(i) for i in range(8))), timeout=20
            )
        finally:
            await batcher.close()

    results = run(main())
    assert [i for (_, i), _ in results] == list(range(8))
    # Both workers took batches, and each batch was answered by the worker that ran it.
    assert {w for (w, _), _ in results} == {0, 1}
    assert all(seen[w] for w in (0, 1))


def test_each_worker_runs_on_its_own_thread_for_good() -> None:
    """A copy of the models always runs on the same thread: after bursts that keep both
    workers busy, lone requests still find their copy on the thread that ran it before."""
    threads: list[set[int]] = [set(), set()]

    def worker(index: int):  # type: ignore[no-untyped-def]
        def fn(items: list[int]) -> list[int]:
            threads[index].add(threading.get_ident())
            time.sleep(0.002)
            return items

        return fn

    async def main() -> None:
        batcher = MicroBatcher([worker(0), worker(1)], max_batch=2, max_wait=0.0)
        batcher.start()
        try:
            for _ in range(10):
                await asyncio.gather(*(batcher.submit(i) for i in range(8)))  # a burst
                for i in range(4):  # then lone requests
                    await batcher.submit(i)
        finally:
            await batcher.close()

    run(main())
    assert all(len(seen) == 1 for seen in threads), threads
    assert threads[0] != threads[1]


def test_with_every_worker_busy_newcomers_make_the_next_batch() -> None:
    sizes: list[int] = []
    release = threading.Event()

    def slow(items: list[int]) -> list[int]:
        release.wait(5)
        return items

    async def main() -> None:
        batcher = MicroBatcher([slow, slow], max_batch=16, max_wait=0.0)
        batcher.on_batch = lambda size, seconds: sizes.append(size)
        batcher.start()
        try:
            # Two lone requests occupy both workers; the five that come while they run share
            # the next batch.
            first = []
            for i in (0, 1):
                first.append(asyncio.ensure_future(batcher.submit(i)))
                await asyncio.sleep(0.05)
            rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(2, 7)]
            await asyncio.sleep(0.05)
            release.set()
            results = await asyncio.wait_for(asyncio.gather(*first, *rest), timeout=10)
            assert [r for r, _ in results] == list(range(7))
        finally:
            await batcher.close()

    run(main())
    assert sorted(sizes) == [1, 1, 5]


def test_closing_answers_every_request_the_batch_in_flight_finishes() -> None:
    release = threading.Event()

    def slow(items: list[int]) -> list[int]:
        release.wait(10)
        return items

    async def main() -> None:
        batcher = MicroBatcher(slow, max_batch=4, max_wait=0.0)
        batcher.start()
        running = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.05)
        # The only worker is busy: 2 is held by the collector, 3 and 4 wait in the queue.
        held = [asyncio.ensure_future(batcher.submit(i)) for i in (2, 3, 4)]
        await asyncio.sleep(0.05)
        closing = asyncio.ensure_future(batcher.close())
        await asyncio.sleep(0.05)
        # Nobody is left waiting for a batch that will never run ...
        outcomes = await asyncio.wait_for(asyncio.gather(*held, return_exceptions=True), 2)
        assert all(isinstance(o, BatcherClosedError) for o in outcomes)
        # ... and the batch already running still answers its request.
        release.set()
        await asyncio.wait_for(closing, 5)
        assert (await running)[0] == 1

    run(main())


def test_an_item_answered_with_an_exception_raises_it_alone_without_a_retry() -> None:
    calls: list[list[int]] = []

    def refuse_negatives(items: list[int]) -> list[int | Exception]:
        calls.append(items)
        time.sleep(0.02)  # the rest queue behind the first: one batch of three
        return [ValueError(f"refused {i}") if i < 0 else 10 * i for i in items]

    async def main() -> list[tuple[int, float] | BaseException]:
        batcher = MicroBatcher(refuse_negatives, max_batch=8, max_wait=0.0)
        batcher.start()
        try:
            first = asyncio.ensure_future(batcher.submit(0))
            await asyncio.sleep(0.005)
            rest = [batcher.submit(i) for i in (1, -2, 3)]
            return await asyncio.gather(first, *rest, return_exceptions=True)
        finally:
            await batcher.close()

    results = run(main())
    assert [r[0] for r in results if isinstance(r, tuple)] == [0, 10, 30]
    assert isinstance(results[2], ValueError) and str(results[2]) == "refused -2"
    # The refusal was an answer, not a failure: nobody was retried alone.
    assert calls == [[0], [1, -2, 3]]


def test_idle_says_whether_an_item_would_run_at_once_and_alone() -> None:
    release = threading.Event()

    def held(items: list[int]) -> list[int]:
        release.wait(5)
        return items

    async def main() -> list[bool]:
        seen = []
        batcher = MicroBatcher(held, max_batch=8, max_wait=0.05)
        seen.append(batcher.idle)  # not started
        batcher.start()
        seen.append(batcher.idle)  # started, nothing to do
        first = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.02)
        seen.append(batcher.idle)  # the only worker runs a batch
        queued = [asyncio.ensure_future(batcher.submit(i)) for i in (2, 3)]
        await asyncio.sleep(0.02)
        release.set()
        await asyncio.gather(first, *queued)
        seen.append(batcher.idle)  # the last batch held two and just ended: steady load
        await asyncio.sleep(0.1)
        seen.append(batcher.idle)  # max_wait later: idle again
        await batcher.close()
        seen.append(batcher.idle)  # closed
        return seen

    assert run(main()) == [False, True, False, False, True, False]
