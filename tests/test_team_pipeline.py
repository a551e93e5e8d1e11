"""Team setup: the whole pipeline against a real `mlflow server` on 127.0.0.1 over HTTP."""

import json
import sys

import pytest

from pipeline.testing.project import (
    TRACKED_STAGES,
    clone_of,
    free_port,
    run,
    stage_env,
    tracking_server,
)

pytestmark = pytest.mark.slow


def test_pipeline_logs_registers_and_sets_alias_over_http(smoke_project, tmp_path):
    import mlflow

    project = clone_of(smoke_project, tmp_path / "project")
    server = tracking_server(tmp_path)
    uri = server.uri
    with server:
        env = stage_env(MLFLOW_TRACKING_URI=uri)
        run(["dvc", "repro", "--force", "--single-item", *TRACKED_STAGES], project, env)
        run_id = json.loads((project / "data/train/run.json").read_text())["run_id"]
        client = mlflow.MlflowClient(tracking_uri=uri)
        r = client.get_run(run_id)
        assert r.info.status == "FINISHED" and "test_accuracy" in r.data.metrics
        assert r.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied by the server
        assert [m.step for m in client.get_metric_history(run_id, "curves/val_accuracy")] == [1, 2]
        champion = client.get_model_version_by_alias("lenet5-mnist", "champion")
        assert champion.run_id == run_id
        lineage = run([sys.executable, "-m", "pipeline.lineage", "--json"], project, env)
        assert json.loads(lineage.stdout)["run_id"] == run_id
    # Nothing went to the project's own SQLite store: the server has the only copy.
    local = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    exp = local.get_experiment_by_name("lenet5-mnist")
    assert not local.search_runs(
        [exp.experiment_id], filter_string=f"attributes.run_id = '{run_id}'"
    )


def test_register_against_a_down_server_fails_with_one_line(smoke_project, tmp_path):
    project = clone_of(smoke_project, tmp_path / "project")
    port = free_port()
    env = stage_env(MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}")
    proc = run([sys.executable, "-m", "pipeline.register"], project, env, check=False)
    assert proc.returncode == 1
    errors = [ln for ln in proc.stderr.splitlines() if " ERROR " in ln]
    assert errors == [e for e in errors if f"127.0.0.1:{port} is unreachable" in e]
    assert len(errors) == 1
