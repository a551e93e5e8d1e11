"""Helpers that write small, valid (or deliberately broken) IDX files for tests."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np


def idx_bytes(arr: np.ndarray, magic: int | None = None) -> bytes:
    """Encode a uint8 array as IDX (magic 0x0000 08 <ndim>, big-endian dims)."""
    magic = (0x08 << 8 | arr.ndim) if magic is None else magic
    dims = b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return magic.to_bytes(4, "big") + dims + arr.astype(np.uint8).tobytes()


def write_mnist_like(
    directory: Path, n_train: int = 300, n_test: int = 100, seed: int = 0, **overrides: bytes
) -> dict[str, bytes]:
    """Write the four MNIST file names with random digits; ``overrides`` replaces contents
    (keyed by file stem with '-' -> '_', e.g. train_labels_idx1_ubyte=b"...").
    Returns the uncompressed contents by file name."""
    rng = np.random.default_rng(seed)
    contents = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = np.arange(n, dtype=np.uint8) % 10
        contents[f"{prefix}-images-idx3-ubyte.gz"] = idx_bytes(x)
        contents[f"{prefix}-labels-idx1-ubyte.gz"] = idx_bytes(y)
    for key, data in overrides.items():
        contents[key.replace("_", "-") + ".gz"] = data
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in contents.items():
        (directory / name).write_bytes(gzip.compress(data))
    return contents
