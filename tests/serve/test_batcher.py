"""Dynamic batching: concurrent requests share one forward pass, none is split, and
requests that arrived on different versions are never batched together."""

import asyncio
import os

import numpy as np

from pipeline.serve.batcher import Batcher
from pipeline.serve.champion import Loaded


def fake(version: str, calls: list) -> Loaded:
    def predict(x: np.ndarray) -> np.ndarray:
        calls.append((version, len(x)))
        out = np.zeros((len(x), 10), np.float32)
        out[:, int(version)] = x[:, 0, 0]  # each row says which image and which version
        return out

    return Loaded("m", version, "run", "numpy", predict)


def images(n: int, start: int) -> np.ndarray:
    x = np.zeros((n, 28, 28), np.float32)
    x[:, 0, 0] = np.arange(start, start + n)
    return x


def answers(batcher: Batcher, requests: list) -> list[np.ndarray]:
    """Send (images, model) requests at once through a running batcher; their answers."""

    async def main():
        batcher.start()
        outs = await asyncio.gather(*(batcher.predict(x, model) for x, model in requests))
        await batcher.stop()
        return outs

    return asyncio.run(main())


def test_concurrent_requests_share_batches_and_get_their_own_rows():
    calls: list = []
    v1 = fake("1", calls)
    outs = answers(
        Batcher(max_batch=64, max_wait_ms=20), [(images(3, 10 * i), v1) for i in range(10)]
    )
    for i, out in enumerate(outs):
        np.testing.assert_array_equal(out[:, 1], np.arange(10 * i, 10 * i + 3))
    assert sum(n for _, n in calls) == 30 and len(calls) < 10  # batched


def test_max_batch_bounds_a_batch_and_versions_are_not_mixed():
    calls: list = []
    v1, v2 = fake("1", calls), fake("2", calls)
    requests = [(images(4, 4 * i), v1 if i < 3 else v2) for i in range(6)]
    outs = answers(Batcher(max_batch=8, max_wait_ms=50), requests)
    assert all(n <= 8 for _, n in calls)
    for i, out in enumerate(outs):  # each request answered whole, by its own version
        column = 1 if i < 3 else 2
        np.testing.assert_array_equal(out[:, column], np.arange(4 * i, 4 * i + 4))
        assert not out[:, 3 - column].any()


def test_a_request_alone_waits_at_most_max_wait():
    calls: list = []
    v1 = fake("1", calls)

    async def main():
        batcher = Batcher(max_batch=64, max_wait_ms=5)
        batcher.start()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await batcher.predict(images(1, 0), v1)
        waited = loop.time() - t0
        await batcher.stop()
        return waited

    assert asyncio.run(main()) < 0.5


def test_past_max_queue_a_request_is_refused_at_once_and_the_rest_answered():
    import pytest

    from pipeline.serve.batcher import Overloaded

    calls: list = []
    v1 = fake("1", calls)

    async def main():
        batcher = Batcher(max_batch=4, max_wait_ms=0, max_queue=10)
        batcher.start()
        # 12 images arrive at once: the first 10 wait, the 11th and 12th are over the bound
        outs = await asyncio.gather(
            *(batcher.predict(images(2, 2 * i), v1) for i in range(6)), return_exceptions=True
        )
        assert batcher.waiting == 0
        await batcher.stop()
        return outs

    outs = asyncio.run(main())
    assert [type(o) for o in outs] == [np.ndarray] * 5 + [Overloaded]
    assert outs[-1].reason == "queue_full" and "serve.max_queue 10" in str(outs[-1])
    assert sum(n for _, n in calls) == 10
    with pytest.raises(Overloaded):  # a zero-image probe before the body is parsed
        b = Batcher(max_batch=4, max_wait_ms=0, max_queue=1)
        b.waiting = 1
        b.admit()


def test_a_request_that_waited_past_max_queue_ms_is_refused_not_computed():
    from pipeline.serve.batcher import Overloaded

    calls: list = []

    def slow(x):
        import time

        time.sleep(0.1)  # one forward pass takes longer than the wait bound
        calls.append(len(x))
        return np.zeros((len(x), 10), np.float32)

    model = Loaded("m", "1", "run", "numpy", slow)

    async def main():
        batcher = Batcher(max_batch=1, max_wait_ms=0, max_queue_ms=30)
        batcher.start()
        outs = await asyncio.gather(
            *(batcher.predict(images(1, i), model) for i in range(3)), return_exceptions=True
        )
        # the forward pass is now measured (~10 images/s): behind 1 image, ~100 ms of wait
        batcher.admit(1000)  # an empty queue admits anything
        batcher.waiting = 1
        try:
            batcher.admit(1)
            expected = None
        except Overloaded as e:
            expected = e.reason
        batcher.waiting = 0
        await batcher.stop()
        return outs, expected

    outs, expected = asyncio.run(main())
    assert isinstance(outs[0], np.ndarray)  # the first went straight to the forward pass
    assert [o.reason for o in outs[1:]] == ["waited", "waited"]  # 100 ms > 30 ms
    assert calls == [1] and expected == "expected_wait"


def test_the_batcher_leaves_the_blas_one_thread():
    """A second BLAS thread spins between the batcher's forward passes (a core burnt at a
    moderate load): a process with a batcher runs the BLAS on one thread. Checked in a
    fresh process, where NumPy's BLAS starts with a thread per core."""
    import json
    import subprocess
    import sys

    code = """if True:
        import json, os
        from threadpoolctl import threadpool_info
        from pipeline.serve.batcher import Batcher
        def blas():
            return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
        before = blas()
        Batcher(max_batch=8, max_wait_ms=1)
        print(json.dumps([os.cpu_count(), before, blas()]))
    """
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, check=True)  # fmt: skip
    cores, before, after = json.loads(proc.stdout)
    assert after and set(after) == {1}
    if cores > 1:
        assert max(before) > 1  # (what the batcher changed)
