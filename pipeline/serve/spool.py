"""Answered means logged: each request's rows go to a local append-only spool file before
its answer leaves; the prediction log's writer moves them to the database.

One process writes its own segments (``<process id>-<n>.spool`` in ``serve.spool_dir``)
and holds an exclusive ``flock`` on ``<process id>.lock`` while it lives. A write is one
``os.write`` to the page cache, no fsync: it survives a killed process (SIGKILL, the OOM
killer), not a power cut. At start a service adopts the segments of every process whose
lock is free (it died) and replays them. The database records how far each segment was
written in the transaction that writes its rows (``spool_progress``), so a replay never
writes a row twice. A spool that cannot be written (a full disk, an unwritable folder)
drops the rows, counted, and the request is answered anyway.

A record: ``<II`` (header length, images), a JSON header (request id, endpoint, version,
time, latency, whether pixels follow), the pixels (n×784 uint8) and the probabilities
(n×10 float32).
"""

from __future__ import annotations

import datetime
import fcntl
import logging
import os
import struct
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

log = logging.getLogger(__name__)

_HEAD = struct.Struct("<II")
SEGMENT_BYTES = 64 * 2**20  # a new segment past this; a consumed one is deleted


def encode(x: np.ndarray, probs: np.ndarray, meta: dict[str, Any], pixels: bool) -> bytes:
    """One request's record: ``x`` (n, 28, 28) 0-255, ``probs`` (n, 10)."""
    header = orjson.dumps({**meta, "pixels": pixels})
    raw = np.clip(np.rint(x), 0, 255).astype(np.uint8).tobytes() if pixels else b""
    return _HEAD.pack(len(header), len(x)) + header + raw + probs.astype("<f4").tobytes()


def rows(record: memoryview) -> list[dict[str, Any]]:
    """The prediction-log rows of one record (without its length prefix)."""
    header_len, n = _HEAD.unpack_from(record)
    meta = orjson.loads(record[_HEAD.size : _HEAD.size + header_len])
    at = _HEAD.size + header_len
    raw = None
    if meta["pixels"]:
        raw = np.frombuffer(record, np.uint8, n * 784, at).reshape(n, 784)
        at += n * 784
    probs = np.frombuffer(record, "<f4", n * 10, at).reshape(n, 10)
    digits = probs.argmax(axis=1)
    top = probs[np.arange(n), digits].tolist()
    rounded = probs.astype(np.float64).round(7).tolist()
    ts = datetime.datetime.fromisoformat(meta["ts"])
    return [
        {
            "request_id": meta["id"],
            "position": i,
            "ts": ts,
            "endpoint": meta["endpoint"],
            "model_version": meta["version"],
            "digit": digit,
            "probability": top[i],
            "probabilities": rounded[i],
            "pixels": raw[i].tobytes() if raw is not None else None,
            "latency_ms": meta["latency_ms"],
        }  # fmt: skip
        for i, digit in enumerate(digits.tolist())
    ]


def _framed(record: bytes) -> bytes:
    return struct.pack("<I", len(record)) + record


@dataclass
class Chunk:
    """Records read from one segment: their rows, and the offset after the last one."""

    segment: str
    end: int
    rows: list[dict[str, Any]]


class Spool:
    """This process's segments, written by the event loop; read by the log's writer."""

    RETRY_S = 5.0

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.owner = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._fd: int | None = None
        self._lock: int | None = None  # this process's flock'ed lock file
        self._adopted: list[tuple[Path, int]] = []  # (lock, fd) of dead processes adopted
        self._size = 0
        self._n = 0
        self.broken: str | None = None  # why the spool cannot be written, if it cannot
        self._retry_at = 0.0
        try:
            folder.mkdir(parents=True, exist_ok=True)
            # locked under another name, then renamed: no other process ever sees this
            # lock file unlocked (and adopts a live process's spool)
            hidden = folder / f".{self.owner}.lock"
            self._lock = os.open(hidden, os.O_CREAT | os.O_RDWR, 0o644)
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(hidden, folder / f"{self.owner}.lock")
            self._open_next()
        except OSError as e:
            self.broken = f"{folder}: {e.strerror or e}"

    def _open_next(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._n += 1
        path = self.folder / f"{self.owner}-{self._n:06d}.spool"
        self._fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
        self._size = 0

    def append(self, record: bytes) -> bool:
        """Write one record (one system call); False if it could not be written. After a
        failure the spool tries again, in a new segment, every ``RETRY_S``."""
        if self.broken is not None:
            if self._lock is None:
                return False  # no folder, no lock: broken for good
            if time.monotonic() < self._retry_at:
                return False
        try:
            if self._size > SEGMENT_BYTES or self.broken is not None:
                self._open_next()
            data = _framed(record)
            written = os.write(self._fd, data)
            if written != len(data):  # a short write: the disk filled up mid-record
                raise OSError(28, "short write (no space left on device?)")
            self._size += written
            self.broken = None
            return True
        except OSError as e:
            self.broken = f"{self.folder}: {e.strerror or e}"
            self._retry_at = time.monotonic() + self.RETRY_S
            return False

    def current(self) -> str | None:
        return None if self._fd is None else f"{self.owner}-{self._n:06d}.spool"

    def mine(self) -> list[str]:
        """This process's segments, oldest first."""
        return sorted(p.name for p in self.folder.glob(f"{self.owner}-*.spool"))

    def orphans(self) -> list[str]:
        """Segments of processes that died (their lock is free), oldest first; locked by
        this process from now on, so that no other replica adopts them too."""
        found = []
        for lock in sorted(self.folder.glob("*.lock")):
            owner = lock.stem
            if owner == self.owner:
                continue
            fd = os.open(lock, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # alive
                os.close(fd)
                continue
            segments = sorted(p.name for p in self.folder.glob(f"{owner}-*.spool"))
            found.extend(segments)
            self._adopted.append((lock, fd))
        return found

    def release_orphan_locks(self) -> None:
        """Delete the lock files of adopted processes once their segments are gone."""
        for lock, fd in self._adopted:
            owner = lock.stem
            if not any(self.folder.glob(f"{owner}-*.spool")):
                lock.unlink(missing_ok=True)
            os.close(fd)
        self._adopted = []

    def read(self, segment: str, offset: int, max_rows: int) -> Chunk:
        """Whole records of ``segment`` from ``offset``, up to about ``max_rows`` rows; a
        torn record at the end (a write cut short) is left for later."""
        out: list[dict[str, Any]] = []
        with open(self.folder / segment, "rb") as f:
            f.seek(offset)
            while len(out) < max_rows:
                size = f.read(4)
                if len(size) < 4:
                    break
                (length,) = struct.unpack("<I", size)
                record = f.read(length)
                if len(record) < length:
                    break
                out.extend(rows(memoryview(record)))
                offset += 4 + length
        return Chunk(segment, offset, out)

    def size(self, segment: str) -> int:
        try:
            return (self.folder / segment).stat().st_size
        except FileNotFoundError:
            return 0

    def delete(self, segment: str) -> None:
        (self.folder / segment).unlink(missing_ok=True)

    def close(self) -> None:
        """No more appends: this process's last segment is closed."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def release(self) -> None:
        """Release this process's lock (its file goes once its segments are gone: a
        segment left behind is adopted by the next start)."""
        if self._lock is None:
            return
        if not self.mine():
            (self.folder / f"{self.owner}.lock").unlink(missing_ok=True)
        os.close(self._lock)
        self._lock = None
