"""Writing the prediction log (its tables: :mod:`pipeline.core.predlog`): one row per image
answered, off the request path.

SQLite (default: ``predictions.db`` at the project root) or PostgreSQL
(``PREDICTION_LOG_URL``, which several replicas share), and ``feedback`` for the true
labels users send back (``POST /feedback``). A request hands its rows over as one lazy
iterable (a deque append: no lock, no thread woken, no row built on the request path); a
writer thread wakes every ``serve.log_flush_ms``, builds the rows and inserts them in
batches;
:meth:`PredictionLog.close` (at shutdown, SIGTERM included) writes every row still queued,
so the log holds exactly the images answered.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from pipeline.core.errors import first_line
from pipeline.core.predlog import LogError, count_rows, feedback, log_url, open_engine, predictions
from pipeline.serve import metrics

log = logging.getLogger(__name__)


class PredictionLog:
    """Rows handed over by the request handlers, inserted in batches by one writer thread."""

    BATCH = 5_000  # rows an INSERT at most

    def __init__(self, engine: sa.Engine, flush_s: float) -> None:
        self.engine, self.flush_s = engine, flush_s
        # deque.append/popleft are atomic: the event loop never waits on the writer
        self._batches: collections.deque[Iterable[dict[str, Any]]] = collections.deque()
        self._stop = threading.Event()
        self.handed = 0  # rows handed over (the event loop's count)
        self.written = 0  # rows written (the writer's)
        self.failures = 0
        self._thread = threading.Thread(target=self._write_loop, name="prediction-log")
        self._thread.start()

    def add(self, rows: Iterable[dict[str, Any]], n: int) -> None:
        """Hand over a request's ``n`` rows (no I/O; a generator is run by the writer)."""
        self._batches.append(rows)
        self.handed += n

    def close(self) -> None:
        """Write every row handed over, then stop the writer."""
        self._stop.set()
        self._thread.join()
        self.engine.dispose()

    def _write_loop(self) -> None:
        pending: list[dict[str, Any]] = []
        while True:
            stopping = self._stop.wait(self.flush_s)
            metrics.LOG_BACKLOG.set(self.handed - self.written)
            while self._batches or pending:
                while self._batches and len(pending) < self.BATCH:
                    pending.extend(self._batches.popleft())
                if self._insert(pending):
                    self.written += len(pending)
                    metrics.LOG_ROWS.inc(len(pending))
                    pending = []
                elif not stopping:
                    break  # kept, and tried again at the next flush
                elif self.failures > 20:  # stopping, and the database is gone
                    left = len(pending) + sum(len(list(b)) for b in self._batches)
                    log.error("prediction log: %d rows could not be written", left)
                    return
            if stopping:
                return

    def _insert(self, rows: list[dict[str, Any]]) -> bool:
        try:
            with self.engine.begin() as conn:
                conn.execute(predictions.insert(), rows)
            return True
        except sa.exc.SQLAlchemyError as e:  # kept, and tried again at the next flush
            self.failures += 1
            metrics.LOG_FAILURES.inc()
            log.warning("prediction log: %d rows wait: %s", len(rows), first_line(e))
            time.sleep(min(5.0, 0.1 * self.failures))
            return False


def store_feedback(engine: sa.Engine, request_id: str, position: int, digit: int) -> None:
    """A true label for one logged image."""
    import datetime

    row = {
        "request_id": request_id,
        "position": position,
        "digit": digit,
        "ts": datetime.datetime.now(datetime.UTC),
    }
    try:
        with engine.begin() as conn:
            conn.execute(feedback.insert(), [row])
    except sa.exc.SQLAlchemyError as e:
        raise LogError(f"feedback not stored: {first_line(e)}") from None


__all__ = ["LogError", "PredictionLog", "count_rows", "log_url", "open_engine", "store_feedback"]
