"""Locks that every process of this machine shares: the local stores' creation, a study's
trial budget."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL (None for any other store)."""
    if not url.startswith("sqlite:///"):
        return None
    return Path(url.removeprefix("sqlite:///").split("?", 1)[0])


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``<path>.lock`` (beside the database it guards). The
    kernel releases it when its holder dies, so a killed process leaves no stale lock;
    like SQLite's own locks it needs a local file system."""
    lock = path.with_name(path.name + ".lock")
    with open(lock, "a") as f:  # (a missing folder: OSError, as the database would give)
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
