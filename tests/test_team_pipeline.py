"""Team setup: the whole pipeline against a real `mlflow server` on 127.0.0.1 over HTTP."""

import json
import sys
from types import SimpleNamespace

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


SECRET = "s3cr3t-token"


@pytest.fixture(scope="module")
def over_http(smoke_project, tmp_path_factory):
    """The tracked stages (`dvc repro --force`) of a copy of the smoke project against a
    real `mlflow server`, the URI carrying a user and a token as some teams write it (a
    server without accounts ignores them); the run's facts read while the server is up."""
    import mlflow

    tmp_path = tmp_path_factory.mktemp("http")
    project = clone_of(smoke_project, tmp_path / "project")
    server = tracking_server(tmp_path)
    with server:
        env = stage_env(MLFLOW_TRACKING_URI=f"http://alice:{SECRET}@127.0.0.1:{server.port}")
        proc = run(["dvc", "repro", "--force", "--single-item", *TRACKED_STAGES], project, env)
        run_id = json.loads((project / "data/train/run.json").read_text())["run_id"]
        client = mlflow.MlflowClient(tracking_uri=server.uri)
        lineage = run([sys.executable, "-m", "pipeline.lineage", "--json"], project, env)
        yield SimpleNamespace(
            project=project,
            output=proc.stdout + proc.stderr + lineage.stdout + lineage.stderr,
            run_id=run_id,
            run=client.get_run(run_id),
            curve=client.get_metric_history(run_id, "curves/val_accuracy"),
            champion=client.get_model_version_by_alias("lenet5-mnist", "champion"),
            lineage=json.loads(lineage.stdout),
        )


def test_pipeline_logs_registers_and_sets_alias_over_http(over_http):
    import mlflow

    r = over_http.run
    assert r.info.status == "FINISHED" and "test_accuracy" in r.data.metrics
    assert r.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied by the server
    assert [m.step for m in over_http.curve] == [1, 2]
    assert over_http.champion.run_id == over_http.run_id
    assert over_http.lineage["run_id"] == over_http.run_id
    # Nothing went to the project's own SQLite store: the server has the only copy.
    local = mlflow.MlflowClient(tracking_uri=f"sqlite:///{over_http.project / 'mlflow.db'}")
    exp = local.get_experiment_by_name("lenet5-mnist")
    assert not local.search_runs(
        [exp.experiment_id], filter_string=f"attributes.run_id = '{over_http.run_id}'"
    )


def test_credentials_in_the_tracking_uri_never_reach_logs_params_or_tags(over_http):
    r = over_http.run
    stored = json.dumps([r.data.params, r.data.tags, over_http.champion.tags])
    part = SECRET[:6]  # not even a piece of it
    assert part not in stored
    assert part not in over_http.output
    assert part not in (over_http.project / "data/train/run.json").read_text()


def test_register_against_a_down_server_fails_with_one_line(smoke_project, tmp_path):
    project = clone_of(smoke_project, tmp_path / "project")
    port = free_port()
    env = stage_env(MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}")
    proc = run([sys.executable, "-m", "pipeline.register"], project, env, check=False)
    assert proc.returncode == 1
    errors = [ln for ln in proc.stderr.splitlines() if " ERROR " in ln]
    assert errors == [e for e in errors if f"127.0.0.1:{port} is unreachable" in e]
    assert len(errors) == 1
