"""The register stage against a real SQLite MLflow store with real runs."""

import json
import sys
import time

import pandas as pd
import pytest

from pipeline.register import rank_runs, score
from tests.conftest import clone_of, mlflow_client, run, set_params, stage_env

pytestmark = pytest.mark.slow
NAME = "lenet5-mnist"


def test_rank_runs_orders_by_accuracy_then_loss_then_newest():
    t = pd.Timestamp("2026-01-01", tz="UTC")
    runs = pd.DataFrame(
        {
            "run_id": ["a", "b", "c", "d", "e"],
            "metrics.test_accuracy": [0.98, 0.99, 0.99, 0.99, 0.999],
            "metrics.test_loss": [0.05, 0.04, 0.03, 0.03, 0.01],
            "start_time": [t, t, t, t + pd.Timedelta(1, "s"), t],
            "tags.model.uri": ["m-a", "m-b", "m-c", "m-d", None],  # e has no model
        }
    )
    assert rank_runs(runs, "test_accuracy")["run_id"].tolist() == ["d", "c", "b", "a"]
    assert score({"test_accuracy": 0.99, "test_loss": 0.03}, "test_accuracy") > score(
        {"test_accuracy": 0.99, "test_loss": 0.04}, "test_accuracy"
    )


def test_rank_runs_on_validation_by_default_and_val_loss_breaks_ties():
    t = pd.Timestamp("2026-01-01", tz="UTC")
    runs = pd.DataFrame(
        {
            "run_id": ["a", "b", "c"],
            "metrics.val_accuracy": [0.990, 0.992, 0.992],
            "metrics.val_loss": [0.03, 0.05, 0.04],
            "metrics.test_accuracy": [0.995, 0.980, 0.981],  # a: best on test, ignored
            "metrics.test_loss": [0.01, 0.09, 0.08],
            "start_time": [t, t, t],
            "tags.model.uri": ["m-a", "m-b", "m-c"],
        }
    )
    assert rank_runs(runs)["run_id"].tolist() == ["c", "b", "a"]
    assert score({"val_accuracy": 0.99, "test_accuracy": 0.5}) > score(
        {"val_accuracy": 0.98, "test_accuracy": 0.9}
    )


def _register(project):
    return run([sys.executable, "-m", "pipeline.register"], project, stage_env())


def _versions(client):
    return sorted(int(v.version) for v in client.search_model_versions(f"name = '{NAME}'"))


def test_repro_registers_the_run_as_champion_with_lineage(smoke_project):
    client = mlflow_client(smoke_project)
    run_id = json.loads((smoke_project / "data/train/run.json").read_text())["run_id"]
    champion = client.get_model_version_by_alias(NAME, "champion")
    assert champion.run_id == run_id
    tags = champion.tags
    assert tags["run_id"] == run_id and len(tags["git.commit"]) == 40
    assert json.loads(tags["params"])["train.max_samples"] == "2000"
    assert {"data.train.md5", "data.val.md5", "data.test.md5"} <= set(tags)
    out = json.loads((smoke_project / "data/register/champion.json").read_text())
    assert out["version"] == int(champion.version) and out["run_id"] == run_id
    assert out["test_accuracy"] == pytest.approx(
        json.loads((smoke_project / "data/eval/metrics.json").read_text())["test_accuracy"]
    )


def champion_model_uri(client) -> str:
    run_id = client.get_model_version_by_alias(NAME, "champion").run_id
    return client.get_run(run_id).data.tags["model.uri"]


def test_register_is_idempotent_and_ignores_incomplete_runs(smoke_project, tmp_path):
    project = clone_of(smoke_project, tmp_path)
    client = mlflow_client(project)
    before = _versions(client)
    champion = client.get_model_version_by_alias(NAME, "champion").version
    exp = client.get_experiment_by_name(NAME).experiment_id
    # A dangling run (SIGKILLed mid-evaluate), a finished run without a model (both
    # "better" than anything real) and one with a model but no metrics: none may count.
    dangling = client.create_run(exp)
    client.log_metric(dangling.info.run_id, "test_accuracy", 0.9999)
    no_model = client.create_run(exp)
    client.log_metric(no_model.info.run_id, "test_accuracy", 0.9998)
    client.set_terminated(no_model.info.run_id, "FINISHED")
    no_metrics = client.create_run(exp, tags={"model.uri": champion_model_uri(client)})
    client.set_terminated(no_metrics.info.run_id, "FINISHED")
    _register(project)
    _register(project)
    assert _versions(client) == before
    assert client.get_model_version_by_alias(NAME, "champion").version == champion


def test_better_experiment_takes_the_alias_and_worse_one_does_not(smoke_project, tmp_path):
    project = clone_of(smoke_project, tmp_path)
    client = mlflow_client(project)
    old = client.get_model_version_by_alias(NAME, "champion")
    old_acc = client.get_run(old.run_id).data.metrics["test_accuracy"]
    env = stage_env()
    run(
        [
            "dvc",
            "exp",
            "run",
            "-n",
            "adam-better",
            "-S",
            "train.optimizer=adam",
            "-S",
            "train.learning_rate=0.002",
        ],
        project,
        env,
    )
    new = client.get_model_version_by_alias(NAME, "champion")
    new_run = client.get_run(new.run_id)
    assert new_run.data.metrics["test_accuracy"] > old_acc
    assert new_run.data.tags["dvc.exp_name"] == "adam-better"
    assert new_run.info.run_name == "adam-better"
    versions = _versions(client)

    # Experiments start from the workspace, which now holds the adam recipe.
    run(["dvc", "exp", "run", "-n", "adam-worse", "-S", "train.learning_rate=0.0001"], project, env)
    assert client.get_model_version_by_alias(NAME, "champion").version == new.version
    assert _versions(client) == versions  # the worse run is not even registered
    worse = client.search_runs(
        [new_run.info.experiment_id], filter_string="tags.`dvc.exp_name` = 'adam-worse'"
    )
    assert len(worse) == 1
    assert worse[0].data.metrics["test_accuracy"] < new_run.data.metrics["test_accuracy"]


def test_alias_on_a_deleted_version_is_repaired(smoke_project, tmp_path):
    project = clone_of(smoke_project, tmp_path)
    client = mlflow_client(project)
    champion = client.get_model_version_by_alias(NAME, "champion")
    client.delete_model_version(NAME, champion.version)
    proc = _register(project)
    fixed = client.get_model_version_by_alias(NAME, "champion")
    assert fixed.run_id == champion.run_id and fixed.version != champion.version
    assert "registered run" in proc.stderr


def test_champion_is_chosen_on_validation_not_test(smoke_project, tmp_path):
    """Of two full runs, the better validation accuracy wins although the other one has the
    better test accuracy; the test accuracy is only reported."""
    project = clone_of(smoke_project, tmp_path)
    client = mlflow_client(project)
    old = client.get_run(client.get_model_version_by_alias(NAME, "champion").run_id)
    val, test = old.data.metrics["val_accuracy"], old.data.metrics["test_accuracy"]
    exp = old.info.experiment_id
    # A second full pipeline run (its own logged model, evaluated): better on validation,
    # worse on test.
    rival_id = client.create_run(exp).info.run_id
    model = client.create_logged_model(exp, name="model", source_run_id=rival_id)
    client.finalize_logged_model(model.model_id, "READY")
    client.set_tag(rival_id, "model.uri", f"models:/{model.model_id}")
    for key, value in {
        "val_accuracy": val + 0.01,
        "val_loss": old.data.metrics["val_loss"],
        "test_accuracy": test - 0.05,
        "test_loss": old.data.metrics["test_loss"] + 1,
    }.items():
        client.log_metric(rival_id, key, value)
    # Finished a while ago: a run that finished just now in another working copy is left
    # to that copy's own register stage (register.SETTLE_S).
    client.set_terminated(rival_id, "FINISHED", end_time=int((time.time() - 3600) * 1000))
    proc = _register(project)
    assert client.get_model_version_by_alias(NAME, "champion").run_id == rival_id
    out = json.loads((project / "data/register/champion.json").read_text())
    assert out["run_id"] == rival_id and out["ranked_by"] == "val_accuracy"
    assert out["test_accuracy"] == pytest.approx(test - 0.05)  # reported, not used
    assert "reported, not used" in proc.stderr

    # register.metric: test_accuracy restores the old rule: the first run wins back.
    set_params(project, register__metric="test_accuracy")
    _register(project)
    assert client.get_model_version_by_alias(NAME, "champion").run_id == old.info.run_id
