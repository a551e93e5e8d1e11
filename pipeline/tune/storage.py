"""Where the study lives (``OPTUNA_STORAGE``) and the lock every worker of it shares."""

from __future__ import annotations

import contextlib
import fcntl
import os
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import optuna
import sqlalchemy
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial

from pipeline.core.errors import PipelineError, first_line, redact
from pipeline.core.layout import OPTUNA_DB, project_root
from pipeline.core.urls import is_postgres, with_driver

STORAGE_ENV = "OPTUNA_STORAGE"


class TuneError(PipelineError):
    """The sweep cannot start or continue (storage, study, params)."""


def storage_url(env: Mapping[str, str] = os.environ) -> str:
    """``OPTUNA_STORAGE`` (a PostgreSQL URL gets the psycopg2 driver), else SQLite
    ``optuna.db`` at the main workspace's root."""
    url = env.get(STORAGE_ENV, "").strip()
    return with_driver(url) if url else f"sqlite:///{project_root() / OPTUNA_DB}"


def open_storage(
    url: str, heartbeat_s: int, on_stale: Callable[[optuna.Study, FrozenTrial], None]
) -> RDBStorage:
    """Optuna's RDBStorage with heartbeats; one line naming the (redacted) URL on failure."""
    if not (url.startswith("sqlite:///") or is_postgres(url)):
        raise TuneError(f"{STORAGE_ENV}={redact(url)}: use sqlite:/// or postgresql://")
    kwargs: dict[str, object] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        kwargs = {"connect_args": {"timeout": 60}}  # wait for the other workers' writes
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                url,
                engine_kwargs=kwargs,
                heartbeat_interval=heartbeat_s,
                grace_period=3 * heartbeat_s,
                heartbeat_stale_trial_callback=on_stale,
            )
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as e:
        raise TuneError(f"optuna storage {redact(url)}: {first_line(e)}") from None


class StudyLock:
    """Mutual exclusion among every worker of a study, on any machine.

    PostgreSQL: a session advisory lock (released by the server if the worker dies).
    SQLite: an exclusive file lock beside the database (one machine: SQLite over a network
    file system is exactly what SQLite's own docs warn against).
    """

    def __init__(self, url: str, study_name: str) -> None:
        self.url = url
        self.key = zlib.crc32(f"pipeline.tune:{study_name}".encode())
        self.engine: sqlalchemy.Engine | None = None
        if not url.startswith("sqlite:///"):  # one connection, kept for the worker's life
            self.engine = sqlalchemy.create_engine(url, pool_size=1, pool_pre_ping=True)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        if self.engine is None:
            path = Path(self.url.removeprefix("sqlite:///").split("?")[0] + ".lock")
            with open(path, "a") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(f, fcntl.LOCK_UN)
            return
        with self.engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
                conn.commit()
