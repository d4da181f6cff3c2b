"""Dynamic batching: items of concurrent requests are coalesced into one model call (the embedder's encoder;
the reranker's listwise generation).

The first waiting item opens a batch; the batch is run when it holds `max_batch_size` items or
`max_wait_ms` after it was opened, whichever comes first. One worker thread runs the model (one model
copy per worker process); each request gets its own items' results, in order. If a batch fails, its
items are retried one by one so that one bad item fails only its own request.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import Any, Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)


class DynamicBatcher:
    def __init__(self, fn: Callable[[list[Any]], Sequence[Any]], *, max_batch_size: int = 32, max_wait_ms: float = 5.0,
                 executor: concurrent.futures.Executor, on_batch: Callable[[int], None] | None = None):
        self.fn, self.max_batch_size, self.max_wait = fn, max_batch_size, max_wait_ms / 1000.0
        self.executor, self.on_batch = executor, on_batch
        self.queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        # the futures of the queued items still waiting for the model: a cancelled submission's (a request that
        # timed out, whose client went away, cut by the shutdown) leave it at once, though its items stay queued
        # until `_collect` drops them
        self._waiting: set[asyncio.Future] = set()

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Finish what is queued, then stop."""
        if self._task is None:
            return
        while self.queue.qsize():
            await asyncio.sleep(0.01)
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass

    def depth(self) -> int:
        """Items waiting to be run (not those of cancelled submissions, still queued until they are dropped)."""
        return len(self._waiting)

    async def submit(self, items: Sequence[Any]) -> np.ndarray:
        """The results of `items` stacked (embeddings: one row per item)."""
        return np.stack(await self.submit_each(items))

    async def submit_each(self, items: Sequence[Any]) -> list:
        """The result of each of `items`, in order."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        for it, f in zip(items, futures):
            self._waiting.add(f)
            f.add_done_callback(self._waiting.discard)
            self.queue.put_nowait((it, f))
        return list(await asyncio.gather(*futures))

    async def _collect(self) -> list:
        loop = asyncio.get_running_loop()
        batch = [await self.queue.get()]
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch_size:
            try:
                batch.append(self.queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        for _, f in batch:
            self._waiting.discard(f)
        return [(it, f) for it, f in batch if not f.done()]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            if self.on_batch:
                self.on_batch(len(batch))
            try:
                out = await loop.run_in_executor(self.executor, self.fn, [it for it, _ in batch])
                for (_, f), v in zip(batch, out):
                    if not f.done():
                        f.set_result(v)
            except Exception as e:  # noqa: BLE001 - isolate the failing item(s)
                if len(batch) == 1:
                    if not batch[0][1].done():
                        batch[0][1].set_exception(e)
                    continue
                for it, f in batch:
                    try:
                        v = (await loop.run_in_executor(self.executor, self.fn, [it]))[0]
                        if not f.done():
                            f.set_result(v)
                    except Exception as e1:  # noqa: BLE001
                        if not f.done():
                            f.set_exception(e1)
