"""Dynamic batching across concurrent requests.

Requests queue their images; one task takes the first waiting request, adds every other
request already waiting (then waits up to ``max_wait_ms`` for more) until ``max_batch``
images, runs one forward pass in a worker thread, and hands each request its rows. While
a batch is computed the next one gathers, so under load batches grow by themselves and at
concurrency 1 a request waits at most ``max_wait_ms``. A request is never split, and is
batched only with requests that arrived on the same model version.

Admission is bounded (load shedding, as BentoML's ``max_latency_ms`` or Ray Serve's
``max_queued_requests``): at most ``max_queue`` images wait, and none waits longer than
``max_queue_ms``. A request over either bound raises :class:`Overloaded` at once (the app
answers 503 with ``Retry-After``): on arrival when the queue is full or its expected wait,
from the measured images/s of recent batches, is over the bound; or when its batch is
gathered, if it waited too long anyway. So past the model's capacity the queue and the
memory stay flat, and the service is back to normal as soon as the load drops. (Where the
HTTP layer is the bound, as with single images on 2 cores, requests wait before they get
here: BENCHMARKS.md, issue 36.)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from dataclasses import dataclass, field

import numpy as np

from pipeline.core.inference import pin_blas_to_one_thread
from pipeline.serve import metrics
from pipeline.serve.champion import Loaded


class Overloaded(Exception):
    """A request refused by the admission bounds; ``reason`` labels
    ``serve_rejected_total``: ``queue_full``, ``expected_wait`` or ``waited``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class _Item:
    x: np.ndarray  # (n, 28, 28) float32
    model: Loaded
    done: asyncio.Future = field(repr=False)
    queued: float = 0.0  # loop time it was queued


class Batcher:
    def __init__(
        self, max_batch: int, max_wait_ms: float, max_queue: int = 1 << 30,
        max_queue_ms: float = float("inf"),
    ) -> None:  # fmt: skip
        self.max_batch, self.max_wait_s = max_batch, max_wait_ms / 1000
        self.max_queue, self.max_queue_s = max_queue, max_queue_ms / 1000
        self.waiting = 0  # images queued, not yet in a batch
        # images/s of the forward pass lately (0: not measured yet); busy time only, so an
        # upper bound of the drain rate: requests it lets in that wait too long anyway are
        # refused when their batch is gathered
        self._rate = 0.0
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._carry: _Item | None = None  # a request for the next batch (another version)
        # One thread runs the forward passes, with one BLAS thread (pin_blas_to_one_thread:
        # a second one spins between passes); the event loop has the other core.
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="forward")
        pin_blas_to_one_thread()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._pool.shutdown(wait=True)

    def admit(self, n: int = 0) -> None:
        """:class:`Overloaded` if ``n`` more images would break a bound (``n=0``: whether
        any request could be admitted now, before its body is read). A request is not
        refused for its own size or compute time: an empty queue admits anything."""
        if self.waiting and self.waiting + max(n, 1) > self.max_queue:
            raise Overloaded(
                "queue_full",
                f"overloaded: {self.waiting} images wait (serve.max_queue {self.max_queue})",
            )
        if self._rate and self.waiting / self._rate > self.max_queue_s:
            wait_ms = self.waiting / self._rate * 1000
            bound = self.max_queue_s * 1000
            raise Overloaded(
                "expected_wait",
                f"overloaded: about {wait_ms:.0f} ms of work waits (serve.max_queue_ms {bound:g})",
            )

    async def predict(self, x: np.ndarray, model: Loaded) -> np.ndarray:
        """(n, 10) probabilities of ``x`` by ``model`` (the version the request got), or
        :class:`Overloaded`."""
        self.admit(len(x))
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._queue.put_nowait(_Item(x, model, done, loop.time()))
        self.waiting += len(x)
        metrics.QUEUE.set(self.waiting)
        return await done

    def _take(self, item: _Item) -> bool:
        """Out of the queue: False (and the request refused) if it waited too long."""
        self.waiting -= len(item.x)
        metrics.QUEUE.set(self.waiting)
        waited = asyncio.get_running_loop().time() - item.queued
        metrics.QUEUE_WAIT.observe(waited)
        if waited <= self.max_queue_s or item.done.done():
            return True
        bound = self.max_queue_s * 1000
        item.done.set_exception(Overloaded(
            "waited", f"overloaded: waited {waited * 1000:.0f} ms (serve.max_queue_ms {bound:g})"
        ))  # fmt: skip
        return False

    async def _next(self) -> _Item:
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        while not self._take(item := await self._queue.get()):
            pass
        return item

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
            if not self._take(item):
                continue
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
            started = loop.time()
            try:
                probs = await loop.run_in_executor(self._pool, items[0].model.predict, x)
            except Exception as e:  # the model failed: every request of the batch hears it
                for item in items:
                    if not item.done.done():
                        item.done.set_exception(e)
                continue
            metrics.BATCH.observe(len(x))
            rate = len(x) / max(loop.time() - started, 1e-6)
            self._rate = rate if not self._rate else 0.8 * self._rate + 0.2 * rate
            metrics.count_digits(probs.argmax(axis=1))
            start = 0
            for item in items:
                if not item.done.done():  # (a client that went away)
                    item.done.set_result(probs[start : start + len(item.x)])
                start += len(item.x)
