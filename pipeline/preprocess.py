"""Stage ``preprocess``: verified IDX files -> stratified train/val/test ``.npz`` arrays.

Outputs (under data/prepared/): train.npz, val.npz, test.npz (x: uint8 N×28×28,
y: uint8 N), summary.json (counts per class per split: data facts, not metrics) and samples.png
(ten digits per class; DVC plot).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipeline.core import plots
from pipeline.core.cli import run
from pipeline.core.data import (
    check_pair,
    class_counts,
    read_idx_gz,
    save_split,
    stratified_split,
    write_json,
)
from pipeline.core.layout import RAW_DIR, SAMPLES_FILE, SUMMARY_FILE, split_file
from pipeline.core.params import PreprocessParams, load_params

log = logging.getLogger(__name__)


def read_mnist(raw_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train": (x, y), "test": (x, y)} decoded and validated from the four IDX files."""
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x = read_idx_gz(raw_dir / f"{prefix}-images-idx3-ubyte.gz", ndim=3)
        y = read_idx_gz(raw_dir / f"{prefix}-labels-idx1-ubyte.gz", ndim=1)
        check_pair(x, y, f"{prefix} set")
        out[split] = (x, y)
    return out


def split_train_val(
    x: np.ndarray, y: np.ndarray, params: PreprocessParams
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Stratified, seeded validation split off the training images."""
    train_idx, val_idx = stratified_split(y, params.val_size, params.seed)
    return {"train": (x[train_idx], y[train_idx]), "val": (x[val_idx], y[val_idx])}


def summarize(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    """{"train": {"count": N, "per_class": {"0": n, ...}}, ...}."""
    return {
        name: {"count": int(len(y)), "per_class": class_counts(y)}
        for name, (_, y) in splits.items()
    }


def main() -> None:
    params = load_params().preprocess
    mnist = read_mnist(RAW_DIR)
    splits = {**split_train_val(*mnist["train"], params), "test": mnist["test"]}
    for name, (x, y) in splits.items():
        save_split(split_file(name), x, y)
    summary = summarize(splits)
    write_json(SUMMARY_FILE, summary)
    plots.save(plots.samples_per_class(*splits["train"]), SAMPLES_FILE)
    log.info("wrote %s", ", ".join(f"{k}: {v['count']}" for k, v in summary.items()))


if __name__ == "__main__":
    run(main)
