"""Where the study lives (``OPTUNA_STORAGE``) and the lock every worker of it shares."""

from __future__ import annotations

import contextlib
import os
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping

import optuna
import sqlalchemy
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial

from pipeline.core.errors import PipelineError, first_line, redact
from pipeline.core.layout import OPTUNA_DB, project_root
from pipeline.core.locks import file_lock, sqlite_path
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
        # RDBStorage creates its tables and stamps Alembic's version when it first opens a
        # new database, with no lock of its own: one worker at a time here, so the later
        # ones find the schema made (SQLite: a file lock; PostgreSQL: an advisory lock).
        with _creation_lock(url), warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                url,
                engine_kwargs=kwargs,
                heartbeat_interval=heartbeat_s,
                grace_period=3 * heartbeat_s,
                heartbeat_stale_trial_callback=on_stale,
            )
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, OSError) as e:
        raise TuneError(f"optuna storage {redact(url)}: {first_line(e)}") from None


@contextlib.contextmanager
def _creation_lock(url: str) -> Iterator[None]:
    """The lock of a study named "(schema)": every worker of any study shares it."""
    lock = StudyLock(url, "(schema)")
    try:
        with lock.held():
            yield
    finally:
        if lock.engine is not None:
            lock.engine.dispose()


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
        db = sqlite_path(self.url)
        if self.engine is None and db is not None:
            with file_lock(db):
                yield
            return
        assert self.engine is not None
        with self.engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
                conn.commit()
