"""The train stage: recipes from params, determinism, and failures that lose nothing."""

import json
import signal
import socket
import sys
import time

import pandas as pd
import pytest

from pipeline.core.params import TrainParams
from pipeline.core.training import learning_rate, make_optimizer
from tests.conftest import (
    clone_of,
    mlflow_client,
    newest_run,
    run,
    set_params,
    stage_env,
    start_training,
)


def test_schedules_and_optimizers_come_from_params():
    cosine = learning_rate(TrainParams(lr_schedule="cosine", epochs=10, learning_rate=0.1), 100)
    assert float(cosine(0)) == pytest.approx(0.1)
    assert float(cosine(1000)) == pytest.approx(0.0, abs=1e-6)
    warm = learning_rate(
        TrainParams(lr_schedule="cosine", warmup_epochs=1, epochs=10, learning_rate=0.1), 100
    )
    assert float(warm(50)) == pytest.approx(0.05, rel=1e-3)
    step = learning_rate(
        TrainParams(lr_schedule="step", lr_decay_epochs=2, lr_decay_rate=0.5, learning_rate=0.1),
        100,
    )
    assert [round(float(step(s)), 6) for s in (0, 199, 200, 400)] == [0.1, 0.1, 0.05, 0.025]
    assert learning_rate(TrainParams(), 100) == 0.01
    sgd = make_optimizer(TrainParams(momentum=0.9, nesterov=True), 10)
    assert type(sgd).__name__ == "SGD" and sgd.nesterov and sgd.momentum == 0.9
    assert (
        type(make_optimizer(TrainParams(optimizer="adamw", weight_decay=1e-4), 10)).__name__
        == "AdamW"
    )


def _train(project, **env):
    return run([sys.executable, "-m", "pipeline.train"], project, stage_env(**env), check=False)


@pytest.mark.slow
def test_same_seed_gives_identical_metrics(smoke_project, tmp_path):
    project = clone_of(smoke_project, tmp_path)
    first = pd.read_csv(project / "data/train/history.csv")
    assert _train(project).returncode == 0
    second = pd.read_csv(project / "data/train/history.csv")
    pd.testing.assert_frame_equal(first, second, check_exact=True)
    client = mlflow_client(project)
    runs = client.search_runs(
        client.get_experiment_by_name("lenet5-mnist").experiment_id, order_by=["start_time ASC"]
    )
    a, b = runs[0], runs[-1]
    assert a.info.run_id != b.info.run_id
    # Seeding Python's random must not give every workspace run the same "random" name.
    assert a.info.run_name != b.info.run_name
    assert b.info.run_name.startswith("workspace-")
    assert a.data.metrics["val_loss"] == b.data.metrics["val_loss"]


@pytest.mark.slow
def test_nan_loss_fails_the_stage_and_the_run(smoke_project, tmp_path):
    project = clone_of(smoke_project, tmp_path)
    (project / "data/train/model.keras").unlink()
    set_params(project, train__learning_rate=1e4, model__activation="relu", train__epochs=3)
    proc = _train(project)
    assert proc.returncode == 1
    assert "training diverged: loss is not finite at epoch 1" in proc.stderr
    assert not (project / "data/train/model.keras").exists()
    assert newest_run(project).info.status == "FAILED"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupt_marks_the_run_killed_and_leaves_no_model(smoke_project, tmp_path, sig):
    project = clone_of(smoke_project, tmp_path)
    (project / "data/train/model.keras").unlink()
    set_params(project, train__epochs=500)
    proc, lines = start_training(project, stage_env())
    proc.send_signal(sig)
    try:
        _, rest = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, "".join(lines) + rest
    assert not (project / "data/train/model.keras").exists()
    assert not [p for p in (project / "data/train").iterdir() if p.name.startswith(".")]
    newest = newest_run(project)
    assert newest.info.status == "KILLED"
    assert json.loads((project / "data/train/run.json").read_text())["run_id"] != (
        newest.info.run_id
    )


def test_unreachable_tracking_server_fails_before_training(smoke_project, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    project = clone_of(smoke_project, tmp_path)
    uri = f"http://user:secret@127.0.0.1:{port}"
    start = time.monotonic()
    proc = _train(project, MLFLOW_TRACKING_URI=uri)
    assert proc.returncode == 1
    errors = [ln for ln in proc.stderr.splitlines() if " ERROR " in ln]
    assert len(errors) == 1
    assert f"tracking server http://***@127.0.0.1:{port} is unreachable" in errors[0]
    assert "secret" not in proc.stderr
    assert "training on" not in proc.stderr
    assert time.monotonic() - start < 60
    assert (project / "data/train/model.keras").exists()  # the previous model is untouched
