"""The prediction log: one row per image answered, written off the request path.

A SQLAlchemy table ``predictions`` in SQLite (default: ``predictions.db`` at the project
root) or PostgreSQL (``PREDICTION_LOG_URL``, which several replicas share), and
``feedback`` for the true labels users send back (``POST /feedback``). Rows wait in a
queue and a writer thread inserts them in batches every ``serve.log_flush_ms``;
:meth:`PredictionLog.close` (at shutdown, SIGTERM included) writes every row still queued,
so the log holds exactly the images answered.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from pipeline.core.errors import PipelineError, first_line, redact
from pipeline.core.layout import PREDICTIONS_DB, project_root
from pipeline.core.locks import file_lock, sqlite_path
from pipeline.core.urls import is_postgres, with_driver

log = logging.getLogger(__name__)

LOG_URL_ENV = "PREDICTION_LOG_URL"
metadata = sa.MetaData()
predictions = sa.Table(
    "predictions",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("request_id", sa.String(36), nullable=False, index=True),
    sa.Column("position", sa.Integer, nullable=False),  # the image's index in its request
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False, index=True),  # UTC
    sa.Column("endpoint", sa.String(16), nullable=False),
    sa.Column("model_version", sa.String(32), nullable=False, index=True),
    sa.Column("digit", sa.SmallInteger, nullable=False),
    sa.Column("probability", sa.Float, nullable=False),  # of the predicted digit
    sa.Column("probabilities", sa.JSON, nullable=False),  # all 10
    sa.Column("pixels", sa.LargeBinary, nullable=True),  # 784 bytes, 28x28 uint8 row-major
    sa.Column("latency_ms", sa.Float, nullable=False),  # the request's, arrival to answer
)
feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("request_id", sa.String(36), nullable=False, index=True),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("digit", sa.SmallInteger, nullable=False),  # the true label
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
)


class LogError(PipelineError):
    """The prediction log cannot be opened or written."""


def log_url(configured: str | None, env: Mapping[str, str] = os.environ) -> str:
    """``PREDICTION_LOG_URL``, else ``serve.log_url``, else SQLite ``predictions.db`` at
    the main workspace's root."""
    url = env.get(LOG_URL_ENV, "").strip() or (configured or "").strip()
    if not url:
        return f"sqlite:///{project_root() / PREDICTIONS_DB}"
    if not (url.startswith("sqlite:///") or is_postgres(url)):
        raise LogError(f"prediction log {redact(url)}: use sqlite:/// or postgresql://")
    return with_driver(url) if is_postgres(url) else url


def open_engine(url: str) -> sa.Engine:
    """The log's engine, its tables created once whoever comes first (a file lock beside
    SQLite; PostgreSQL's own catalog locks make ``CREATE TABLE IF NOT EXISTS`` safe)."""
    db = sqlite_path(url)
    try:
        if db is not None:
            engine = sa.create_engine(url, connect_args={"timeout": 60})
            with file_lock(db):
                metadata.create_all(engine)
                with engine.begin() as conn:  # readers never block the writer
                    conn.exec_driver_sql("PRAGMA journal_mode=WAL")
            return engine
        engine = sa.create_engine(url, pool_pre_ping=True, pool_size=2)
        with engine.begin() as conn:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(29301)"))  # one creator
            metadata.create_all(conn)
        return engine
    except sa.exc.SQLAlchemyError as e:
        raise LogError(f"prediction log {redact(url)}: {first_line(e)}") from None


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


def count_rows(url: str) -> int:
    """Rows in the ``predictions`` table (tests and benchmarks)."""
    engine = sa.create_engine(with_driver(url))
    try:
        with engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(predictions)).scalar_one()
    finally:
        engine.dispose()
