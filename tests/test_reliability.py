"""Faults that must lose nothing: SIGKILL, a tracking server that dies, a locked store."""

import signal
import sqlite3
import sys
import threading
import time

import pytest

from pipeline.testing.project import (
    clone_of,
    run,
    set_params,
    stage_env,
    start_training,
    tracking_server,
)
from tests.stores import mlflow_client

pytestmark = pytest.mark.slow


def test_sigkill_mid_epoch_leaves_no_model_and_no_champion(smoke_project, tmp_path):
    project = clone_of(smoke_project, tmp_path)
    client = mlflow_client(project)
    champion = client.get_model_version_by_alias("lenet5-mnist", "champion")
    (project / "data/train/model.keras").unlink()
    set_params(project, train__epochs=500)
    proc, _ = start_training(project, stage_env())
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (project / "data/train/model.keras").exists()
    assert not [p for p in (project / "data/train").iterdir() if p.name.startswith(".")]
    exp = client.get_experiment_by_name("lenet5-mnist").experiment_id
    dangling = client.search_runs([exp], filter_string="attributes.status = 'RUNNING'")
    assert len(dangling) == 1  # SIGKILL gives no chance to say goodbye...
    # ...so register and compare ignore it, and the next dvc repro starts over cleanly.
    out = run([sys.executable, "-m", "pipeline.compare", "--format", "csv"], project).stdout
    assert dangling[0].info.run_id not in out
    run([sys.executable, "-m", "pipeline.register"], project)
    assert client.get_model_version_by_alias("lenet5-mnist", "champion").version == (
        champion.version
    )
    set_params(project, train__epochs=1)
    run(["dvc", "repro", "train"], project)  # the killed stage (what follows it is tested apart)
    assert (project / "data/train/model.keras").exists()


def test_tracking_server_dying_mid_run_fails_the_stage_and_registers_nothing(
    smoke_project, tmp_path
):
    project = clone_of(smoke_project, tmp_path / "project")
    server = tracking_server(tmp_path)
    uri, port = server.uri, server.port
    (project / "data/train/model.keras").unlink()
    set_params(project, train__epochs=500)
    env = stage_env(MLFLOW_TRACKING_URI=uri)
    with server as process:
        proc, seen = start_training(project, env, until="epoch 2/")
        process.terminate()  # the server goes away in the middle of training
    start = time.monotonic()
    _, rest = proc.communicate(timeout=300)
    assert proc.returncode == 1, rest
    assert time.monotonic() - start < 120
    errors = [ln for ln in rest.splitlines() if " ERROR " in ln]
    assert len(errors) == 1 and f"127.0.0.1:{port}" in errors[0]
    assert "Traceback" not in rest
    assert not (project / "data/train/model.keras").exists()
    # Back up: the run is not finished, and register finds nothing to register from it.
    with tracking_server(tmp_path, port):
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=uri)
        runs = client.search_runs([client.get_experiment_by_name("lenet5-mnist").experiment_id])
        assert len(runs) == 1 and runs[0].info.status != "FINISHED"
        proc = run([sys.executable, "-m", "pipeline.register"], project, env, check=False)
        assert proc.returncode == 1 and "no finished run" in proc.stderr
        assert not client.search_registered_models()


def test_locked_sqlite_store_is_waited_for(smoke_project, tmp_path):
    """Another writer holds the store's lock for 5 s: the stage waits, then succeeds."""
    project = clone_of(smoke_project, tmp_path)
    locked = threading.Event()

    def hold_lock():
        con = sqlite3.connect(project / "mlflow.db", isolation_level=None)
        con.execute("BEGIN EXCLUSIVE")
        locked.set()
        time.sleep(5)
        con.execute("COMMIT")
        con.close()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    locked.wait(10)
    start = time.monotonic()
    proc = run([sys.executable, "-m", "pipeline.register"], project, check=False)
    holder.join()
    assert proc.returncode == 0, proc.stderr
    assert "database is locked" not in proc.stderr
    assert time.monotonic() - start >= 4  # it really had to wait
