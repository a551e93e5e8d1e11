"""Stage ``feedback`` on a real prediction log: labels up to the cut-off become
byte-identical splits, a revoked sender's labels leave the next dataset, and bad input
(no log, a cut-off in the future, an unreadable log) is one line and exit 1."""

from __future__ import annotations

import datetime
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from pipeline.core.predlog import open_engine, predictions
from pipeline.serve import keys
from pipeline.serve.log import store_feedback
from pipeline.testing.project import ROOT, run, set_params

NOW = datetime.datetime.now(datetime.UTC)


@pytest.fixture
def project(tmp_path) -> Path:
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def answered(engine: sa.Engine, n: int) -> list[str]:
    """``n`` single-image requests in the log as the service writes them (digit i % 10
    drawn as pixels of value i % 10): their request ids."""
    rows = [{"request_id": f"req{i:04d}", "position": 0, "ts": NOW, "endpoint": "invocations",
             "model_version": "1", "digit": i % 10, "probability": 0.9,
             "probabilities": [0.01] * 10, "pixels": bytes([i % 10]) * 784, "latency_ms": 1.0}
            for i in range(n)]  # fmt: skip
    with engine.begin() as conn:
        conn.execute(predictions.insert(), rows)
    return [r["request_id"] for r in rows]


def stage(project: Path, check: bool = True):
    return run([sys.executable, "-m", "pipeline.feedback"], project, check=check)


def outputs(project: Path) -> dict[str, bytes]:
    folder = project / "data/feedback"
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_labels_become_the_same_files_and_a_revoked_senders_go(project):
    engine = open_engine(f"sqlite:///{project / 'predictions.db'}")
    for name in ("alice", "bob", "mallory"):
        keys.add(engine, name)
    ids = answered(engine, 200)
    for i, rid in enumerate(ids):
        store_feedback(engine, rid, 0, i % 10, "alice")
        if i % 4 == 0:
            store_feedback(engine, rid, 0, (i + 1) % 10, "mallory")  # 50 flipped labels
    store_feedback(engine, ids[1], 0, 7, "bob")  # disagrees with alice's 1
    set_params(project, feedback__until=datetime.datetime.now(datetime.UTC).isoformat())
    stage(project)
    summary = json.loads((project / "data/feedback/summary.json").read_text())
    assert summary["labels"] == 251 and summary["revoked_labels"] == 0
    assert summary["disagreeing_images"] == 51 and summary["images"] == 149
    first = outputs(project)
    stage(project)  # rebuilt from the same log, cut-off and keys: the same bytes
    assert outputs(project) == first
    store_feedback(engine, ids[2], 0, 2, "bob")  # sent after the cut-off: not taken
    stage(project)
    assert outputs(project) == first

    keys.revoke(engine, "mallory")
    stage(project)
    summary = json.loads((project / "data/feedback/summary.json").read_text())
    assert summary["revoked_labels"] == 50 and summary["disagreeing_images"] == 1
    assert summary["images"] == 199 and summary["train_images"] + summary["holdout_images"] == 199
    with np.load(project / "data/feedback/train.npz", allow_pickle=False) as z:
        x, y, got = z["x"], z["y"], z["ids"]
    assert (x[:, 0, 0] == y).all()  # each image with the label its senders agree on
    assert "req0001:0" not in got.tolist()  # alice and bob disagree on it
    with np.load(project / "data/feedback/holdout.npz", allow_pickle=False) as z:
        assert not set(z["ids"].tolist()) & set(got.tolist())
    engine.dispose()


def test_no_cut_off_reads_no_log(project):
    stage(project)  # no predictions.db anywhere: MNIST alone
    assert json.loads((project / "data/feedback/summary.json").read_text())["images"] == 0
    assert not (project / "predictions.db").exists()


@pytest.mark.parametrize("case", ["no log", "future", "corrupt log"])
def test_bad_input_is_one_line_and_leaves_the_last_dataset(project, case):
    stage(project)
    before = outputs(project)
    until = NOW + datetime.timedelta(days=1) if case == "future" else NOW
    set_params(project, feedback__until=until.isoformat())
    if case == "corrupt log":
        (project / "predictions.db").write_bytes(b"not a database" * 100)
    proc = stage(project, check=False)
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0, proc.stderr
    words = {"no log": "no prediction log", "future": "in the future",
             "corrupt log": "prediction log"}[case]  # fmt: skip
    assert words in proc.stderr
    assert outputs(project) == before
