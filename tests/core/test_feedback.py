"""Labels into a dataset: who is left out and why, each image's split fixed by its id,
the same labels giving the same arrays."""

from __future__ import annotations

import datetime

import numpy as np
import pytest

from pipeline.core.feedback import Label, build, empty, in_holdout

T0 = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)


def label(rid: str, sender: str | None, digit: int, minute: int = 0, pixels: bool = True,
          position: int = 0) -> Label:  # fmt: skip
    image = bytes([digit]) * 784 if pixels else None
    return Label(rid, position, sender, digit, T0 + datetime.timedelta(minutes=minute), image)


def test_each_kind_of_untrusted_label_is_left_out_and_counted():
    labels = [
        label("agreed", "alice", 3), label("agreed", "bob", 3),
        label("disputed", "alice", 4), label("disputed", "bob", 9),
        label("poisoned", "mallory", 1),
        label("old", None, 2),  # sent before labels needed a key
        label("blind", "alice", 5, pixels=False),  # logged without pixels
        label("changed", "alice", 6, minute=0), label("changed", "alice", 7, minute=5),
    ]  # fmt: skip
    data = build(labels, revoked={"mallory"}, holdout_share=0.0)
    assert data.counts == {
        "labels": 9, "revoked_labels": 1, "unattributed_labels": 1, "disagreeing_images": 1,
        "no_pixels_images": 1, "images": 2, "train_images": 2, "holdout_images": 0,
    }  # fmt: skip
    assert data.train.ids.tolist() == ["agreed:0", "changed:0"]
    assert data.train.y.tolist() == [3, 7]  # alice's latest label counts
    assert (data.train.x[1] == 7).all() and data.train.x.dtype == np.uint8
    assert len(data.holdout) == 0


def test_an_images_split_never_moves_as_the_log_grows():
    ids = [f"req{i}" for i in range(2000)]
    small = build([label(r, "alice", 1) for r in ids[:500]], set(), 0.3)
    large = build([label(r, "alice", 1) for r in ids], set(), 0.3)
    assert set(small.holdout.ids) <= set(large.holdout.ids)
    assert set(small.train.ids) <= set(large.train.ids)
    assert large.counts["holdout_images"] / 2000 == pytest.approx(0.3, abs=0.03)
    assert all(in_holdout(i, 0.3) for i in large.holdout.ids)


def test_the_same_labels_in_any_order_give_the_same_arrays():
    labels = [label(f"r{i}", s, i % 10, position=i % 3) for i in range(300) for s in ("a", "b")]
    one, two = build(labels, set(), 0.3), build(labels[::-1], set(), 0.3)
    for name in ("train", "holdout"):
        a, b = getattr(one, name), getattr(two, name)
        assert a.ids.tolist() == sorted(a.ids.tolist()) == b.ids.tolist()
        assert a.x.tobytes() == b.x.tobytes() and a.y.tobytes() == b.y.tobytes()


def test_no_labels_is_an_empty_dataset():
    data = empty()
    assert data.train.x.shape == (0, 28, 28) and data.counts["images"] == 0
