"""Writing the prediction log (its tables: :mod:`pipeline.core.predlog`): one row per image
answered.

SQLite (default: ``predictions.db`` at the project root) or PostgreSQL
(``PREDICTION_LOG_URL``, which several replicas share), and ``feedback`` for the true
labels users send back (``POST /feedback``). A request's rows are in the local spool
(:mod:`pipeline.serve.spool`) before its answer leaves; a writer thread wakes every
``serve.log_flush_ms`` and moves them to the database in batches, each with its spool
offset in the same transaction. A database that is down costs no request and no memory:
the rows wait on disk, and whatever is left at exit (or after ``kill -9``) is written by
the next start. :meth:`PredictionLog.close` writes every row it can before it returns.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from typing import Any

import numpy as np
import sqlalchemy as sa

from pipeline.core.errors import first_line
from pipeline.core.predlog import (
    LogError,
    count_rows,
    feedback,
    log_url,
    open_engine,
    predictions,
    spool_progress,
)
from pipeline.serve import metrics
from pipeline.serve.spool import Chunk, Spool, encode

log = logging.getLogger(__name__)


class PredictionLog:
    """Rows spooled by the request handlers, moved to the database by one writer thread."""

    BATCH = 5_000  # rows an INSERT at most

    def __init__(self, engine: sa.Engine, flush_s: float, spool: Spool) -> None:
        self.engine, self.flush_s, self.spool = engine, flush_s, spool
        self._stop = threading.Event()
        self.handed = 0  # rows spooled (the event loop's count)
        self.written = 0  # rows written (the writer's)
        self.dropped = 0  # rows the spool could not take
        self.failures = 0
        self._offsets: dict[str, int] = {}  # how far each segment is in the database
        self._orphans = spool.orphans() if spool.broken is None else []
        self._adopting = spool.broken is None  # (lock files of dead processes to remove)
        self._clean = False  # the writer stopped with every row written
        if spool.broken is not None:
            log.error("prediction log spool: %s: rows are not logged", spool.broken)
        elif self._orphans:
            log.info("prediction log: replaying %d spool segments a stopped service left",
                     len(self._orphans))  # fmt: skip
        self._thread = threading.Thread(target=self._write_loop, name="prediction-log")
        self._thread.start()

    def add(self, x: np.ndarray, probs: np.ndarray, meta: dict[str, Any], pixels: bool) -> None:
        """Spool one request's rows (one write to the page cache; the answer waits for it).
        A spool that cannot take them drops them, counted: the request is answered."""
        if self.spool.append(encode(x, probs, meta, pixels)):
            self.handed += len(x)
            return
        if not self.dropped:
            log.error("prediction log spool: %s: rows are dropped (serve_log_dropped_total)",
                      self.spool.broken)  # fmt: skip
        self.dropped += len(x)
        metrics.LOG_DROPPED.inc(len(x))

    def label(self, request_id: str, position: int, digit: int, sender: str) -> bool:
        """Store a true label (:func:`store_feedback`). An image answered a moment ago may
        still be in a spool: this process's is written first (up to 10 s: a writer behind
        on a busy machine is not a missing image), and another replica's has two flush
        intervals to arrive. False when the image is not in the log."""
        if store_feedback(self.engine, request_id, position, digit, sender):
            return True
        target, deadline = self.handed, time.monotonic() + max(3 * self.flush_s + 1, 10.0)
        while self.written < target and time.monotonic() < deadline:
            time.sleep(0.01)
        if store_feedback(self.engine, request_id, position, digit, sender):
            return True
        time.sleep(2 * self.flush_s)
        return store_feedback(self.engine, request_id, position, digit, sender)

    def close(self) -> None:
        """Write every spooled row the database takes, then stop the writer."""
        self._stop.set()
        self._thread.join()
        self.spool.close()
        if self._clean:  # the last segment, written whole, goes too
            self._drain()
        self.spool.release()
        self.engine.dispose()

    def _write_loop(self) -> None:
        while True:
            stopping = self._stop.wait(self.flush_s)
            done = self._drain()
            metrics.LOG_BACKLOG.set(max(0, self.handed - self.written))
            if stopping and (done or self.failures > 20):
                self._clean = done
                if not done:
                    log.error("prediction log: the database is down; the rows wait in %s "
                              "for the next start", self.spool.folder)  # fmt: skip
                return

    def _drain(self) -> bool:
        """Move every whole record of the spool to the database; False if it failed."""
        for segment in [*self._orphans, *self.spool.mine()]:
            offset = self._offsets.get(segment)
            if offset is None:
                offset = self._offset_in_db(segment)
                if offset is None:
                    return False
            while True:
                chunk = self.spool.read(segment, offset, self.BATCH)
                if not chunk.rows:
                    break
                if not self._insert(chunk):
                    return False
                offset = self._offsets[segment] = chunk.end
                self.written += len(chunk.rows)
                metrics.LOG_ROWS.inc(len(chunk.rows))
            if segment != self.spool.current() and offset >= self.spool.size(segment):
                self._forget(segment)  # written whole, and nobody appends to it any more
        if self._adopting and not self._orphans:  # every adopted segment written
            self._adopting = False
            self.spool.release_orphan_locks()
        return True

    def _offset_in_db(self, segment: str) -> int | None:
        try:
            with self.engine.connect() as conn:
                found = conn.execute(sa.select(spool_progress.c.offset).where(
                    spool_progress.c.segment == segment)).scalar()  # fmt: skip
        except sa.exc.SQLAlchemyError as e:
            self._failed(e, 0)
            return None
        return int(found or 0)

    def _forget(self, segment: str) -> None:
        """The segment's file goes first: a crash in between leaves a stale progress row
        (harmless), never a file replayed from 0."""
        self.spool.delete(segment)
        self._offsets.pop(segment, None)
        if segment in self._orphans:
            self._orphans.remove(segment)
        try:
            with self.engine.begin() as conn:
                conn.execute(spool_progress.delete().where(spool_progress.c.segment == segment))
        except sa.exc.SQLAlchemyError:
            pass  # (a stale row of a deleted file is never read)

    def _insert(self, chunk: Chunk) -> bool:
        try:
            with self.engine.begin() as conn:
                conn.execute(predictions.insert(), chunk.rows)
                at = spool_progress.c.segment == chunk.segment
                done = conn.execute(spool_progress.update().where(at).values(offset=chunk.end))
                if done.rowcount == 0:
                    conn.execute(spool_progress.insert(), [{"segment": chunk.segment,
                                                            "offset": chunk.end}])  # fmt: skip
            return True
        except sa.exc.SQLAlchemyError as e:  # kept on disk, tried again at the next flush
            self._failed(e, len(chunk.rows))
            return False

    def _failed(self, e: Exception, rows: int) -> None:
        self.failures += 1
        metrics.LOG_FAILURES.inc()
        log.warning("prediction log: %d rows wait in the spool: %s", rows, first_line(e))
        self._stop.wait(min(5.0, 0.1 * self.failures))  # (no wait once stopping)


def store_feedback(
    engine: sa.Engine, request_id: str, position: int, digit: int, sender: str
) -> bool:
    """``sender``'s true label for one logged image, replacing that sender's earlier one;
    False (nothing stored) when the log has no such image."""
    p, f = predictions, feedback
    row = {"request_id": request_id, "position": position, "digit": digit, "sender": sender,
           "ts": datetime.datetime.now(datetime.UTC)}  # fmt: skip
    try:
        with engine.begin() as conn:
            known = conn.execute(
                sa.select(p.c.id)
                .where(p.c.request_id == request_id, p.c.position == position)
                .limit(1)
            ).first()
            if known is None:
                return False
            conn.execute(
                f.delete().where(
                    f.c.request_id == request_id, f.c.position == position, f.c.sender == sender
                )
            )
            conn.execute(f.insert(), [row])
    except sa.exc.SQLAlchemyError as e:
        raise LogError(f"feedback not stored: {first_line(e)}") from None
    return True


__all__ = [
    "LogError", "PredictionLog", "Spool", "count_rows", "log_url", "open_engine", "store_feedback"
]  # fmt: skip
