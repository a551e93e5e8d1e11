"""The prediction log's layout, named once: tables ``predictions`` (one row per image the
scoring service answered), ``feedback`` (true labels sent back, each with its sender) and
``feedback_keys`` (the senders' credentials, hashed), where the log lives
(``PREDICTION_LOG_URL``, ``serve.log_url``, else SQLite ``predictions.db`` at the project
root), and reading it back. ``pipeline.serve`` writes it, ``pipeline.monitor`` reads it.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping

import numpy as np
import sqlalchemy as sa

from pipeline.core.errors import PipelineError, first_line, redact
from pipeline.core.feedback import Label
from pipeline.core.layout import PREDICTIONS_DB, project_root
from pipeline.core.locks import file_lock, sqlite_path
from pipeline.core.urls import is_postgres, with_driver

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
    # The feedback key's name (feedback_keys.name); NULL for labels sent before keys were
    # needed, which no dataset takes.
    sa.Column("sender", sa.String(64), nullable=True),
)
# Who may send labels (python -m pipeline.serve keys): one row per key, only its SHA-256
# kept. A name is never reused, so a revoked sender's labels stay recognisable as such.
feedback_keys = sa.Table(
    "feedback_keys",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("key_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("created", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked", sa.DateTime(timezone=True), nullable=True),
)

# How far each spool segment of pipeline.serve has been written into ``predictions``,
# updated in the same transaction as the rows: a replayed segment never writes a row twice.
spool_progress = sa.Table(
    "spool_progress",
    metadata,
    sa.Column("segment", sa.String(128), primary_key=True),
    sa.Column("offset", sa.BigInteger, nullable=False),
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
                    _add_sender(conn)
            return engine
        engine = sa.create_engine(url, pool_pre_ping=True, pool_size=2)
        with engine.begin() as conn:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(29301)"))  # one creator
            metadata.create_all(conn)
            _add_sender(conn)
        return engine
    except (sa.exc.SQLAlchemyError, OSError) as e:
        raise LogError(f"prediction log {redact(url)}: {first_line(e)}") from None


def _add_sender(conn: sa.Connection) -> None:
    """A log made before feedback had senders gets the column (its old labels stay NULL)."""
    if "sender" not in {c["name"] for c in sa.inspect(conn).get_columns("feedback")}:
        conn.exec_driver_sql("ALTER TABLE feedback ADD COLUMN sender VARCHAR(64)")


def count_rows(url: str) -> int:
    """Rows in the ``predictions`` table (tests and benchmarks)."""
    engine = sa.create_engine(with_driver(url))
    try:
        with engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(predictions)).scalar_one()
    finally:
        engine.dispose()


def latest_version(engine: sa.Engine) -> str | None:
    """The model version of the last logged image (None for an empty log)."""
    p = predictions
    query = sa.select(p.c.model_version).order_by(p.c.id.desc()).limit(1)
    try:
        with engine.connect() as conn:
            return conn.execute(query).scalar()
    except sa.exc.SQLAlchemyError as e:
        raise LogError(f"prediction log: {first_line(e)}") from None


def read_window(
    engine: sa.Engine, last: int | None = None, since: datetime.datetime | None = None,
    version: str | None = None,
) -> dict[str, np.ndarray]:  # fmt: skip
    """The logged images of a window, oldest first: ``--last`` N images, or those ``since``
    a time, of one ``version`` or all. Arrays: request_id, position, ts, model_version,
    digit, probabilities (N, 10), pixels (N, 28, 28 uint8, or None when not logged), and
    label (the latest true digit sent by a key not revoked, -1 where there is none)."""
    p, f = predictions, feedback
    query = sa.select(p.c.id, p.c.request_id, p.c.position, p.c.ts, p.c.model_version,
                      p.c.digit, p.c.probabilities, p.c.pixels)  # fmt: skip
    if version is not None:
        query = query.where(p.c.model_version == version)
    if since is not None:
        query = query.where(p.c.ts >= since)
    query = query.order_by(p.c.id.desc())
    if last is not None:
        query = query.limit(last)
    labels = (
        sa.select(f.c.request_id, f.c.position, sa.func.max(f.c.id).label("latest"))
        .where(sa.or_(f.c.sender.is_(None), f.c.sender.not_in(_revoked())))  # untrusted
        .group_by(f.c.request_id, f.c.position)
        .subquery()
    )
    label_rows = sa.select(f.c.request_id, f.c.position, f.c.digit).join(
        labels, f.c.id == labels.c.latest
    )
    try:
        with engine.connect() as conn:
            rows = conn.execute(query).all()[::-1]
            truth = {(r.request_id, r.position): r.digit for r in conn.execute(label_rows)}
    except sa.exc.SQLAlchemyError as e:
        raise LogError(f"prediction log: {first_line(e)}") from None
    pixels = None
    if rows and all(r.pixels is not None for r in rows):
        pixels = np.frombuffer(b"".join(r.pixels for r in rows), np.uint8).reshape(-1, 28, 28)
    return {
        "request_id": np.array([r.request_id for r in rows], dtype=object),
        "position": np.array([r.position for r in rows], dtype=np.int64),
        "ts": np.array([r.ts for r in rows], dtype=object),
        "model_version": np.array([r.model_version for r in rows], dtype=object),
        "digit": np.array([r.digit for r in rows], dtype=np.int64),
        "probabilities": np.array([r.probabilities for r in rows], np.float64).reshape(-1, 10),
        "pixels": pixels,
        "label": np.array([truth.get((r.request_id, r.position), -1) for r in rows], np.int64),
    }


def read_labels(engine: sa.Engine, until: datetime.datetime) -> list[Label]:
    """Every label sent up to ``until``, with its image's pixels (None where not logged)."""
    p, f = predictions, feedback
    query = (
        sa.select(f.c.request_id, f.c.position, f.c.sender, f.c.digit, f.c.ts, p.c.pixels)
        .join(p, (p.c.request_id == f.c.request_id) & (p.c.position == f.c.position))
        .where(f.c.ts <= until)
        .order_by(f.c.id)
    )
    try:
        with engine.connect() as conn:
            rows = conn.execute(query).all()
    except sa.exc.SQLAlchemyError as e:
        raise LogError(f"prediction log: labels unreadable: {first_line(e)}") from None
    return [Label(r.request_id, r.position, r.sender, r.digit, _utc(r.ts), r.pixels) for r in rows]


def revoked_senders(engine: sa.Engine) -> set[str]:
    """The names of every revoked feedback key, whenever it was revoked."""
    try:
        with engine.connect() as conn:
            return set(conn.execute(_revoked()).scalars())
    except sa.exc.SQLAlchemyError as e:
        raise LogError(f"prediction log: revoked keys unreadable: {first_line(e)}") from None


def _revoked() -> sa.Select:
    """The names of the revoked feedback keys (a subquery of the label queries)."""
    return sa.select(feedback_keys.c.name).where(feedback_keys.c.revoked.is_not(None))


def _utc(ts: datetime.datetime) -> datetime.datetime:
    """SQLite hands back naive datetimes; every time the service writes is UTC."""
    return ts.replace(tzinfo=datetime.UTC) if ts.tzinfo is None else ts


def count_labels(engine: sa.Engine, since: datetime.datetime | None) -> int:
    """Labels of keys not revoked sent after ``since`` (all of them for None)."""
    f = feedback
    query = (
        sa.select(sa.func.count())
        .select_from(f)
        .where(f.c.sender.is_not(None), f.c.sender.not_in(_revoked()))
    )
    if since is not None:
        query = query.where(f.c.ts > since)
    try:
        with engine.connect() as conn:
            return int(conn.execute(query).scalar_one())
    except sa.exc.SQLAlchemyError as e:
        raise LogError(f"prediction log: labels unreadable: {first_line(e)}") from None
