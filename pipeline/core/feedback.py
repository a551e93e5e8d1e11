"""Labels sent back to the scoring service, made into training data: pure functions.

An image (a request id and the image's index in it) is taken when every sender that
labelled it agrees, none of them revoked, and its pixels were logged. Each sender's
latest label counts (``POST /feedback`` replaces a sender's earlier one anyway). The
image's split, ``train`` or ``holdout`` (the production slice register gates on), is fixed
by a hash of its id, so it never moves between them as the log grows. Everything is
sorted by id: the same labels give the same arrays, byte for byte.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
from collections.abc import Iterable

import numpy as np


@dataclasses.dataclass(frozen=True)
class Label:
    """One row of the log's ``feedback`` joined to its image."""

    request_id: str
    position: int
    sender: str | None  # None: sent before labels needed a key
    digit: int
    ts: datetime.datetime
    pixels: bytes | None  # 784 bytes, or None when the service logged no pixels


@dataclasses.dataclass(frozen=True)
class Split:
    x: np.ndarray  # (N, 28, 28) uint8
    y: np.ndarray  # (N,) uint8
    ids: np.ndarray  # (N,) "request_id:index" strings

    def __len__(self) -> int:
        return len(self.y)


@dataclasses.dataclass(frozen=True)
class Dataset:
    train: Split
    holdout: Split
    counts: dict[str, int]  # what was read, taken and left out, and why


def image_id(request_id: str, position: int) -> str:
    return f"{request_id}:{position}"


def in_holdout(image: str, share: float) -> bool:
    """Fixed by the id alone: the first 8 bytes of its SHA-256 as a fraction of 2**64."""
    h = int.from_bytes(hashlib.sha256(image.encode()).digest()[:8], "big")
    return h < share * 2**64


def build(labels: Iterable[Label], revoked: set[str], holdout_share: float) -> Dataset:
    """The dataset of these labels, leaving out revoked and unattributed senders, images
    whose senders disagree and images without pixels; each counted."""
    counts = dict.fromkeys(("labels", "revoked_labels", "unattributed_labels",
                            "disagreeing_images", "no_pixels_images"), 0)  # fmt: skip
    latest: dict[str, dict[str, Label]] = {}  # image -> sender -> its latest label
    for label in labels:
        counts["labels"] += 1
        if label.sender is None:
            counts["unattributed_labels"] += 1
        elif label.sender in revoked:
            counts["revoked_labels"] += 1
        else:
            by_sender = latest.setdefault(image_id(label.request_id, label.position), {})
            seen = by_sender.get(label.sender)
            if seen is None or label.ts >= seen.ts:
                by_sender[label.sender] = label
    parts: dict[str, list[tuple[str, bytes, int]]] = {"train": [], "holdout": []}
    for image in sorted(latest):
        votes = latest[image].values()
        if len({v.digit for v in votes}) > 1:
            counts["disagreeing_images"] += 1
            continue
        first = next(iter(votes))
        if first.pixels is None:
            counts["no_pixels_images"] += 1
            continue
        part = "holdout" if in_holdout(image, holdout_share) else "train"
        parts[part].append((image, first.pixels, first.digit))
    splits = {name: _split(rows) for name, rows in parts.items()}
    train, holdout = splits["train"], splits["holdout"]
    counts.update(images=len(train) + len(holdout), train_images=len(train),
                  holdout_images=len(holdout))  # fmt: skip
    return Dataset(train, holdout, counts)


def _split(rows: list[tuple[str, bytes, int]]) -> Split:
    x = np.frombuffer(b"".join(r[1] for r in rows), np.uint8).reshape(-1, 28, 28)
    y = np.array([r[2] for r in rows], np.uint8)
    ids = np.array([r[0] for r in rows], dtype="U")  # (no pickles: a fixed-width string)
    return Split(x.copy(), y, ids)


def empty() -> Dataset:
    """No labels: what a project without a service trains on besides MNIST."""
    return build([], set(), 0.0)
