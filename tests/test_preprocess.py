import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.errors import DataError
from pipeline.core.params import PreprocessParams
from pipeline.preprocess import read_mnist, split_train_val, summarize
from tests.idx_files import idx_bytes, write_mnist_like

ROOT = Path(__file__).resolve().parents[1]


def test_read_split_and_summarize(tmp_path):
    write_mnist_like(tmp_path, n_train=300, n_test=100)
    mnist = read_mnist(tmp_path)
    splits = {
        **split_train_val(*mnist["train"], PreprocessParams(val_size=50, seed=1)),
        "test": mnist["test"],
    }
    summary = summarize(splits)
    assert {k: v["count"] for k, v in summary.items()} == {"train": 250, "val": 50, "test": 100}
    assert summary["val"]["per_class"] == {str(d): 5 for d in range(10)}
    assert splits["train"][0].dtype == np.uint8 and splits["train"][0].shape[1:] == (28, 28)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"train_labels_idx1_ubyte": idx_bytes(np.full(300, 10, np.uint8))}, "label 10"),
        (
            {"train_labels_idx1_ubyte": idx_bytes(np.zeros(299, np.uint8))},
            "300 images but 299 labels",
        ),
        (
            {
                "t10k_images_idx3_ubyte": idx_bytes(
                    np.zeros((100, 28, 28), np.uint8), magic=0x00000801
                )
            },
            "bad IDX magic",
        ),
    ],
)
def test_bad_idx_is_rejected(tmp_path, override, message):
    write_mnist_like(tmp_path, **override)
    with pytest.raises(DataError, match=message):
        read_mnist(tmp_path)


def run_stage(cwd) -> subprocess.CompletedProcess:
    """`python -m pipeline.preprocess` in ``cwd``, with this checkout's code."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline.preprocess"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_stage_fails_with_one_line_and_writes_nothing(tmp_path):
    """`python -m pipeline.preprocess` on a bad label file: exit 1, one error line, no arrays."""
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    write_mnist_like(
        tmp_path / "data/raw", train_labels_idx1_ubyte=idx_bytes(np.full(300, 11, np.uint8))
    )
    proc = run_stage(tmp_path)
    assert proc.returncode == 1
    errors = [ln for ln in proc.stderr.splitlines() if " ERROR " in ln]
    assert len(errors) == 1 and "label 11 outside 0–9" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "data/prepared").exists()


def test_stage_writes_arrays_summary_and_samples(tmp_path):
    (tmp_path / "params.yaml").write_text(
        (ROOT / "params.yaml").read_text().replace("val_size: 5000", "val_size: 30")
    )
    write_mnist_like(tmp_path / "data/raw")
    assert run_stage(tmp_path).returncode == 0
    out = tmp_path / "data/prepared"
    with np.load(out / "val.npz", allow_pickle=False) as z:
        assert z["x"].shape == (30, 28, 28) and z["x"].dtype == np.uint8
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train"]["count"] == 270 and summary["test"]["count"] == 100
    assert (out / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert leftovers == []
