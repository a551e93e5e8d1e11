import gzip

import numpy as np
import pytest

from pipeline.core.data import (
    check_pair,
    decode_idx,
    load_split,
    read_idx_gz,
    save_split,
    stratified_split,
)
from pipeline.core.errors import DataError
from tests.idx_files import idx_bytes


def test_decode_roundtrip():
    x = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    out = decode_idx(idx_bytes(x), ndim=3)
    assert out.dtype == np.uint8 and out.shape == (2, 28, 28)
    np.testing.assert_array_equal(out, x)


@pytest.mark.parametrize(
    ("buf", "message"),
    [
        (idx_bytes(np.zeros(5, np.uint8), magic=0x00000803), "bad IDX magic number 0x00000803"),
        (idx_bytes(np.zeros(5, np.uint8), magic=0x12340801), "bad IDX magic"),
        (idx_bytes(np.zeros(5, np.uint8))[:-1], "need 5 bytes of data, found 4"),
        (idx_bytes(np.zeros(5, np.uint8)) + b"\0", "need 5 bytes of data, found 6"),
        (b"\0\0", "too short"),
    ],
)
def test_decode_rejects_bad_buffers(buf, message):
    with pytest.raises(DataError, match=message):
        decode_idx(buf, ndim=1, name="labels")


def test_read_idx_gz_reports_corrupt_gzip(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(100, np.uint8)))[:-10])
    with pytest.raises(DataError, match="x.gz: corrupt gzip"):
        read_idx_gz(path, ndim=1)


def test_check_pair_rejects_count_mismatch_and_label_10():
    x = np.zeros((3, 28, 28), np.uint8)
    with pytest.raises(DataError, match="3 images but 2 labels"):
        check_pair(x, np.zeros(2, np.uint8), "train")
    with pytest.raises(DataError, match="label 10 outside 0–9"):
        check_pair(x, np.array([0, 10, 1], np.uint8), "train")
    with pytest.raises(DataError, match="expected 28×28"):
        check_pair(np.zeros((3, 27, 28), np.uint8), np.zeros(3, np.uint8), "train")


def test_stratified_split_is_exact_disjoint_seeded_and_stratified():
    y = np.repeat(np.arange(10), [500, 600, 700, 400, 300, 800, 900, 650, 550, 600])
    train, val = stratified_split(y, val_size=601, seed=7)
    assert len(val) == 601 and len(train) == len(y) - 601
    assert not set(train) & set(val)
    share = np.bincount(y[val], minlength=10) / 601
    np.testing.assert_allclose(share, np.bincount(y) / len(y), atol=1 / 601)
    again = stratified_split(y, val_size=601, seed=7)
    np.testing.assert_array_equal(val, again[1])
    assert not np.array_equal(val, stratified_split(y, val_size=601, seed=8)[1])


def test_split_files_roundtrip_without_pickle(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    y = np.array([1, 2, 3, 4, 5], np.uint8)
    save_split(tmp_path / "val.npz", x, y)
    x2, y2 = load_split("val", tmp_path)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    assert [p.name for p in tmp_path.iterdir()] == ["val.npz"]  # no temp files left


def test_load_split_refuses_pickled_arrays(tmp_path):
    np.savez(tmp_path / "train.npz", x=np.array([{"evil": 1}], dtype=object), y=np.zeros(1))
    with pytest.raises(DataError, match="unreadable"):
        load_split("train", tmp_path)


def test_a_split_is_the_same_bytes_whenever_written_and_never_half_written(tmp_path, monkeypatch):
    import time

    x, y = np.zeros((3, 28, 28), np.uint8), np.arange(3, dtype=np.uint8)
    path = tmp_path / "s.npz"
    save_split(path, x, y, ids=np.array(["a:0", "b:0", "c:0"]))
    first = path.read_bytes()
    later = time.time() + 3600  # np.savez stamps each member with the time of writing
    monkeypatch.setattr(time, "time", lambda: later)
    save_split(path, x, y, ids=np.array(["a:0", "b:0", "c:0"]))
    assert path.read_bytes() == first

    def dies(f, array, **kw):
        f.write(b"half")
        raise KeyboardInterrupt  # killed mid-way

    monkeypatch.setattr(np.lib.format, "write_array", dies)
    with pytest.raises(KeyboardInterrupt):
        save_split(path, x + 1, y)
    assert path.read_bytes() == first and [p.name for p in tmp_path.iterdir()] == ["s.npz"]


def test_a_split_never_written_loads_as_no_images(tmp_path):
    from pipeline.core.data import load_split_or_empty

    x, y = load_split_or_empty("train", tmp_path)
    assert x.shape == (0, 28, 28) and x.dtype == np.uint8 and len(y) == 0
    save_split(tmp_path / "train.npz", np.ones((2, 28, 28), np.uint8), np.array([1, 2], np.uint8))
    assert load_split_or_empty("train", tmp_path)[1].tolist() == [1, 2]
