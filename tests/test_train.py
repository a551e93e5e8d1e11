"""The train stage: failures that lose nothing (the recipe from params:
tests/core/test_training.py; determinism, bit for bit on a fresh clone: tests/test_register.py
test_a_fresh_clone_repro_registers_a_champion_the_service_serves)."""

import json
import signal
import socket
import sys
import time

import pytest

from pipeline.testing.project import clone_of, run, set_params, stage_env, start_training
from tests.stores import newest_run

pytestmark = pytest.mark.slow  # every test here runs the train stage


def _train(project, **env):
    return run([sys.executable, "-m", "pipeline.train"], project, stage_env(**env), check=False)


def test_nan_loss_fails_the_stage_and_the_run(smoke_project, tmp_path):
    project = clone_of(smoke_project, tmp_path)
    (project / "data/train/model.keras").unlink()
    set_params(project, train__learning_rate=1e4, model__activation="relu", train__epochs=3)
    proc = _train(project)
    assert proc.returncode == 1
    assert "training diverged: loss is not finite at epoch 1" in proc.stderr
    assert not (project / "data/train/model.keras").exists()
    assert newest_run(project).info.status == "FAILED"


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
    assert newest.info.status == "KILLED", "".join(lines) + rest
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
