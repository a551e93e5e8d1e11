"""Dynamic batching across concurrent requests.

Requests queue their images; one task takes the first waiting request, adds every other
request already waiting (then waits up to ``max_wait_ms`` for more) until ``max_batch``
images, runs one forward pass in a worker thread, and hands each request its rows. While
a batch is computed the next one gathers, so under load batches grow by themselves and at
concurrency 1 a request waits at most ``max_wait_ms``. A request is never split, and is
batched only with requests that arrived on the same model version.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from dataclasses import dataclass, field

import numpy as np

from pipeline.serve import metrics
from pipeline.serve.champion import Loaded


@dataclass
class _Item:
    x: np.ndarray  # (n, 28, 28) float32
    model: Loaded
    done: asyncio.Future = field(repr=False)


class Batcher:
    def __init__(self, max_batch: int, max_wait_ms: float) -> None:
        self.max_batch, self.max_wait_s = max_batch, max_wait_ms / 1000
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._carry: _Item | None = None  # a request for the next batch (another version)
        # one thread: the forward pass uses the BLAS's threads, the event loop the rest
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="forward")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._pool.shutdown(wait=True)

    async def predict(self, x: np.ndarray, model: Loaded) -> np.ndarray:
        """(n, 10) probabilities of ``x`` by ``model`` (the version the request got)."""
        done = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(x, model, done))
        return await done

    async def _next(self) -> _Item:
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        return await self._queue.get()

    async def _gather(self) -> list[_Item]:
        first = await self._next()
        items, n = [first], len(first.x)
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while n < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), left)
                except TimeoutError:
                    break
            if item.model is not first.model or n + len(item.x) > self.max_batch:
                self._carry = item  # first in the next batch
                break
            items.append(item)
            n += len(item.x)
        return items

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._gather()
            x = items[0].x if len(items) == 1 else np.concatenate([i.x for i in items])
            try:
                probs = await loop.run_in_executor(self._pool, items[0].model.predict, x)
            except Exception as e:  # the model failed: every request of the batch hears it
                for item in items:
                    if not item.done.done():
                        item.done.set_exception(e)
                continue
            metrics.BATCH.observe(len(x))
            start = 0
            for item in items:
                if not item.done.done():  # (a client that went away)
                    item.done.set_result(probs[start : start + len(item.x)])
                start += len(item.x)
