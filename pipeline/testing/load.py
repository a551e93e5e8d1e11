"""A bounded HTTP load: ``concurrency`` clients send requests until ``requests`` were sent
or ``seconds`` passed, then stop (tests/serve and ``python -m benchmarks.serve``).

asyncio + aiohttp: one process drives hundreds of requests a second on one core, and
every answer's status, latency and ``X-Model-Version`` header is kept.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp


@dataclass
class Answer:
    status: int  # 0: no answer (connection refused, reset, timed out)
    latency_s: float
    version: str | None
    body: bytes
    sent_at: float  # seconds since the load started
    retry_after: str | None = None  # the Retry-After header of a 503
    request_id: str | None = None  # the X-Request-Id header: the answer's rows in the log


@dataclass
class Load:
    answers: list[Answer] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def errors(self) -> int:
        return sum(1 for a in self.answers if not 200 <= a.status < 300)

    @property
    def throughput(self) -> float:
        return len(self.answers) / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        """Latency percentile in milliseconds."""
        import numpy as np

        return float(np.percentile([a.latency_s for a in self.answers], q) * 1000)


async def _drive(
    url: str, body: Callable[[int], bytes | aiohttp.FormData], concurrency: int,
    requests: int | None, seconds: float | None, headers: dict[str, str], keep_body: bool,
    stop: threading.Event | None, pause_s: float, urls: list[str] | None,
) -> Load:  # fmt: skip
    load = Load()
    sent = 0
    start = time.perf_counter()
    deadline = start + seconds if seconds else float("inf")
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def client() -> None:
            nonlocal sent
            while (requests is None or sent < requests) and time.perf_counter() < deadline:
                if stop is not None and stop.is_set():
                    return
                i = sent
                sent += 1
                target = urls[i % len(urls)] if urls else url
                t0 = time.perf_counter()
                try:
                    async with session.post(target, data=body(i), headers=headers) as resp:
                        data = await resp.read()
                        status, version = resp.status, resp.headers.get("X-Model-Version")
                        retry = resp.headers.get("Retry-After")
                        rid = resp.headers.get("X-Request-Id")
                except (aiohttp.ClientError, TimeoutError) as e:
                    status, version, data, retry, rid = 0, None, repr(e).encode(), None, None
                t1 = time.perf_counter()
                load.answers.append(Answer(
                    status, t1 - t0, version, data if keep_body else b"", t0 - start, retry, rid
                ))  # fmt: skip
                if pause_s:
                    await asyncio.sleep(pause_s)

        await asyncio.gather(*(client() for _ in range(concurrency)))
    load.seconds = time.perf_counter() - start
    return load


def drive(
    url: str, body: Callable[[int], bytes | aiohttp.FormData], concurrency: int = 1,
    requests: int | None = None, seconds: float | None = None,
    headers: dict[str, str] | None = None, keep_body: bool = False,
    stop: threading.Event | None = None, pause_s: float = 0.0, urls: list[str] | None = None,
) -> Load:  # fmt: skip
    """Run the load to its bound (or until ``stop`` is set); ``body(i)`` makes the i-th
    request's body; ``urls``: the requests go round-robin to these instead of ``url``;
    ``pause_s``: each client rests this long between requests."""
    if requests is None and seconds is None:
        raise ValueError("bound the load: requests=, seconds= or both")
    return asyncio.run(
        _drive(
            url,
            body,
            concurrency,
            requests,
            seconds,
            headers or {"Content-Type": "application/json"},
            keep_body,
            stop,
            pause_s,
            urls,
        )  # fmt: skip
    )


async def _open_loop(
    url: str, body: Callable[[int], bytes], rate: float, seconds: float,
    headers: dict[str, str], connections: int,
) -> Load:  # fmt: skip
    load = Load()
    start = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def one(i: int) -> None:
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            try:
                async with session.post(url, data=body(i), headers=headers) as resp:
                    await resp.read()
                    status, version = resp.status, resp.headers.get("X-Model-Version")
                    retry = resp.headers.get("Retry-After")
            except (aiohttp.ClientError, TimeoutError):
                status, version, retry = 0, None, None
            # latency from when the request was due, not when a connection was free: an
            # open-loop load counts the client-side wait too (no coordinated omission)
            load.answers.append(
                Answer(status, time.perf_counter() - due, version, b"", due - start, retry)
            )

        await asyncio.gather(*(one(i) for i in range(int(rate * seconds))))
    load.seconds = time.perf_counter() - start
    return load


def drive_rate(
    url: str, body: Callable[[int], bytes], rate: float, seconds: float,
    headers: dict[str, str] | None = None, connections: int = 256,
) -> Load:  # fmt: skip
    """An open-loop load: ``rate`` requests a second for ``seconds``, each sent when it is
    due whether or not the earlier ones were answered (at most ``connections`` at once)."""
    headers = headers or {"Content-Type": "application/json"}
    return asyncio.run(_open_loop(url, body, rate, seconds, headers, connections))
