"""`DynamicBatcher` alone: concurrent submissions coalesce into model calls of at most `max_batch_size` items, each
caller gets its own items' results in order, and a failing item fails only its own submission."""

from __future__ import annotations

import asyncio
import concurrent.futures

import numpy as np
import pytest

from unime.serve.batching import DynamicBatcher


def _run(fn, submissions, *, max_batch_size=4, max_wait_ms=50.0):
    calls: list[list] = []

    def model(items):
        calls.append(list(items))
        return fn(items)

    async def main():
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            b = DynamicBatcher(model, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, executor=pool)
            b.start()
            try:
                return await asyncio.gather(*(b.submit_each(s) for s in submissions), return_exceptions=True)
            finally:
                await b.stop()
    return asyncio.run(main()), calls


def test_submissions_share_calls_and_get_their_own_results():
    out, calls = _run(lambda items: [x * 10 for x in items], [[1], [2, 3], [4], [5], [6]])
    assert out == [[10], [20, 30], [40], [50], [60]]
    assert sorted(x for c in calls for x in c) == [1, 2, 3, 4, 5, 6]  # every item once
    assert len(calls) == 2 and max(len(c) for c in calls) <= 4  # 6 items submitted together: 4 + 2


def test_a_failing_item_fails_only_its_own_submission():
    def model(items):
        if "bad" in items:
            raise ValueError("cannot score 'bad'")
        return [len(x) for x in items]

    out, calls = _run(model, [["a"], ["bad"], ["ccc"]])
    assert out[0] == [1] and out[2] == [3]
    assert isinstance(out[1], ValueError) and "cannot score 'bad'" in str(out[1])
    assert calls[0] == ["a", "bad", "ccc"] and sorted(map(tuple, calls[1:])) == [("a",), ("bad",), ("ccc",)]


def test_submit_stacks_the_results():
    async def main():
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            b = DynamicBatcher(lambda items: [np.full(2, x, dtype=np.float32) for x in items], executor=pool)
            b.start()
            try:
                return await b.submit([1, 2, 3])
            finally:
                await b.stop()
    got = asyncio.run(main())
    assert got.shape == (3, 2) and got[:, 0].tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("n", [1, 9])
def test_one_item_at_a_time_when_the_batch_size_is_one(n):
    out, calls = _run(lambda items: items, [[i] for i in range(n)], max_batch_size=1)
    assert out == [[i] for i in range(n)] and all(len(c) == 1 for c in calls) and len(calls) == n


def test_an_item_whose_submission_was_cancelled_is_never_run():
    """A request that timed out (or whose client went away) while its item waited behind a running batch: the item
    is dropped from the queue, not run once the model is free (a running batch cannot be interrupted)."""
    import threading

    release, started = threading.Event(), threading.Event()
    calls: list[list] = []

    def model(items):
        calls.append(list(items))
        started.set()
        release.wait(10)
        return [x * 10 for x in items]

    async def main():
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            b = DynamicBatcher(model, max_batch_size=4, max_wait_ms=1.0, executor=pool)
            b.start()
            try:
                first = asyncio.ensure_future(b.submit_each(["long"]))
                await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
                with pytest.raises(asyncio.TimeoutError):  # as `unime.serve.app`'s request timeout does
                    await asyncio.wait_for(b.submit_each([1, 2]), 0.05)
                gone = asyncio.ensure_future(b.submit_each([3]))
                await asyncio.sleep(0.01)
                gone.cancel()
                later = asyncio.ensure_future(b.submit_each([4]))
                await asyncio.sleep(0.01)
                release.set()
                return await first, await later
            finally:
                await b.stop()
    assert asyncio.run(main()) == (["longlonglonglonglonglonglonglonglonglong"], [40])
    assert calls == [["long"], [4]]


def test_the_queue_depth_counts_only_items_still_waiting_to_be_run():
    """QA: the `unime_queue_depth` gauge (and /health's `queue_depth`) counted the items of a submission cancelled
    (a request that timed out, whose client went away) until the batcher dropped them. A batch holds the model:
    2 + 1 items of two submissions wait; one is cancelled: 1 waits; the other's item is run: 0 wait."""
    import threading

    release, started = threading.Event(), threading.Event()

    def model(items):
        started.set()
        release.wait(10)
        return items

    async def main():
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            b = DynamicBatcher(model, max_batch_size=4, max_wait_ms=1.0, executor=pool)
            b.start()
            depths = [b.depth()]
            try:
                first = asyncio.ensure_future(b.submit_each(["running"]))
                await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
                depths.append(b.depth())  # the running item is not waiting
                gone = asyncio.ensure_future(b.submit_each([1, 2]))
                stays = asyncio.ensure_future(b.submit_each([3]))
                await asyncio.sleep(0.01)
                depths.append(b.depth())
                gone.cancel()
                await asyncio.sleep(0.01)
                depths.append(b.depth())
                release.set()
                results = await first, await stays
                depths.append(b.depth())
                return depths, results
            finally:
                await b.stop()
    assert asyncio.run(main()) == ([0, 0, 3, 1, 0], (["running"], [3]))
