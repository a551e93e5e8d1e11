"""The spool: records round-trip to log rows, torn tails wait, a dead process's segments
are adopted by the next one (and only by one), a spool that cannot be written says so."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys

import numpy as np
import pytest

from pipeline.serve.spool import Spool, encode, rows

META = {"id": "r1", "endpoint": "invocations", "version": "4", "latency_ms": 1.5,
        "ts": datetime.datetime(2026, 12, 6, tzinfo=datetime.UTC).isoformat()}  # fmt: skip


def probs_of(n: int) -> np.ndarray:
    p = np.full((n, 10), 0.05, np.float32)
    p[np.arange(n), np.arange(n) % 10] = 0.55
    return p


def test_a_record_becomes_one_row_per_image():
    x = np.full((2, 28, 28), 254.6, np.float32)
    record = encode(x, probs_of(2), META, pixels=True)
    out = rows(memoryview(record))
    assert [r["digit"] for r in out] == [0, 1] and [r["position"] for r in out] == [0, 1]
    assert out[0]["pixels"] == bytes([255]) * 784 and out[1]["probability"] == pytest.approx(0.55)
    assert out[0]["request_id"] == "r1" and out[0]["ts"].tzinfo is not None
    assert rows(memoryview(encode(x, probs_of(2), META, pixels=False)))[0]["pixels"] is None


def test_whole_records_are_read_and_a_torn_tail_waits(tmp_path):
    spool = Spool(tmp_path)
    for i in range(3):
        assert spool.append(encode(np.zeros((i + 1, 28, 28)), probs_of(i + 1), META, True))
    (segment,) = spool.mine()
    size = spool.size(segment)
    with open(tmp_path / segment, "ab") as f:  # half a record: a write cut short
        f.write((1000).to_bytes(4, "little") + b"x" * 10)
    chunk = spool.read(segment, 0, max_rows=100)
    assert len(chunk.rows) == 6 and chunk.end == size
    assert spool.read(segment, chunk.end, 100).rows == []


def test_a_dead_process_segments_are_adopted_once(tmp_path):
    code = (
        "import numpy as np, sys; from pathlib import Path; "
        "from pipeline.serve.spool import Spool, encode; s = Spool(Path(sys.argv[1])); "
        "p = np.full((3, 10), 0.1, np.float32); "
        f"s.append(encode(np.zeros((3, 28, 28)), p, {META!r}, True))"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)  # dies: lock free
    first, second = Spool(tmp_path), Spool(tmp_path)
    adopted = first.orphans()
    assert len(adopted) == 1 and second.orphans() == []  # locked by the first adopter
    assert len(first.read(adopted[0], 0, 100).rows) == 3
    first.delete(adopted[0])
    first.release_orphan_locks()
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".lock", ".lock", ".spool", ".spool"]


def test_a_spool_that_cannot_be_written_says_why(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    spool = Spool(tmp_path / "file" / "spool")
    assert spool.broken and "Not a directory" in spool.broken
    assert not spool.append(b"x")
    spool.release()
    if os.path.exists("/dev/full"):  # a full disk: the write fails, the spool says so
        ok = Spool(tmp_path / "ok")
        os.dup2(os.open("/dev/full", os.O_WRONLY), ok._fd)
        assert not ok.append(b"x" * 100) and "No space left" in ok.broken
