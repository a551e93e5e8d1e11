"""Writing the prediction log (its tables: :mod:`pipeline.core.predlog`): one row per image
answered, off the request path.

SQLite (default: ``predictions.db`` at the project root) or PostgreSQL
(``PREDICTION_LOG_URL``, which several replicas share), and ``feedback`` for the true
labels users send back (``POST /feedback``). Rows wait in a
queue and a writer thread inserts them in batches every ``serve.log_flush_ms``;
:meth:`PredictionLog.close` (at shutdown, SIGTERM included) writes every row still queued,
so the log holds exactly the images answered.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

import sqlalchemy as sa

from pipeline.core.errors import first_line
from pipeline.core.predlog import LogError, count_rows, feedback, log_url, open_engine, predictions

log = logging.getLogger(__name__)


class PredictionLog:
    """Rows queued by the request handlers, inserted in batches by one writer thread."""

    def __init__(self, engine: sa.Engine, flush_s: float) -> None:
        self.engine, self.flush_s = engine, flush_s
        self._queue: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self.written = 0
        self.failures = 0
        self._thread = threading.Thread(target=self._write_loop, name="prediction-log")
        self._thread.start()

    def add(self, rows: list[dict[str, Any]]) -> None:
        """Queue rows (no I/O: the request never waits for the database)."""
        for row in rows:
            self._queue.put(row)

    def close(self) -> None:
        """Write every queued row, then stop the writer."""
        self._queue.put(None)
        self._thread.join()
        self.engine.dispose()

    def _write_loop(self) -> None:
        pending: list[dict[str, Any]] = []
        stopping = False
        while not stopping or pending:
            deadline = time.monotonic() + self.flush_s
            while not stopping:
                try:
                    row = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if row is None:
                    stopping = True
                else:
                    pending.append(row)
                if len(pending) >= 5_000:
                    break
            if pending and self._insert(pending):
                self.written += len(pending)
                pending = []
            elif pending and stopping and self.failures > 20:  # the database is gone
                log.error("prediction log: %d rows could not be written", len(pending))
                return

    def _insert(self, rows: list[dict[str, Any]]) -> bool:
        try:
            with self.engine.begin() as conn:
                conn.execute(predictions.insert(), rows)
            return True
        except sa.exc.SQLAlchemyError as e:  # kept, and tried again at the next flush
            self.failures += 1
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
