"""Runs against a real SQLite store in tmp_path: start/end states, nesting, params,
metrics, tags and search."""

import mlflow
import pytest

from pipeline.core import tracking
from pipeline.core.errors import TrackingError


def status(run_id):
    return tracking.get_run(run_id).info.status


def test_the_store_is_in_the_workspace(experiment_id, tmp_path):
    assert (tmp_path / "mlflow.db").is_file()
    location = mlflow.get_experiment(experiment_id).artifact_location
    assert location == (tmp_path / "mlartifacts").resolve().as_uri()


def test_a_run_that_returns_is_finished(experiment_id):
    with tracking.active_run(experiment_id=experiment_id, run_name="r1", tags={"a": "b"}) as rid:
        assert mlflow.active_run().info.run_id == rid
    assert mlflow.active_run() is None
    run = tracking.get_run(rid)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "r1" and run.data.tags["a"] == "b"
    assert tracking.PARENT_TAG not in run.data.tags


def test_a_run_that_raises_is_failed(experiment_id):
    with (
        pytest.raises(ValueError, match="boom"),
        tracking.active_run(experiment_id=experiment_id) as rid,
    ):
        raise ValueError("boom")
    assert status(rid) == "FAILED"
    assert mlflow.active_run() is None


def test_an_interrupted_run_is_killed(experiment_id):
    with pytest.raises(KeyboardInterrupt), tracking.active_run(experiment_id=experiment_id) as rid:
        raise KeyboardInterrupt
    assert status(rid) == "KILLED"


def test_an_mlflow_error_inside_the_run_is_one_tracking_error(experiment_id):
    with (
        pytest.raises(TrackingError, match=r"^MLflow run \w+: ") as e,
        tracking.active_run(experiment_id=experiment_id) as rid,
    ):
        raise mlflow.exceptions.MlflowException("server went away\ntraceback...")
    assert str(e.value) == f"MLflow run {rid}: server went away"
    assert status(rid) == "FAILED"


def test_a_run_that_cannot_start_is_a_tracking_error(experiment_id):
    with (
        pytest.raises(TrackingError, match="^cannot start MLflow run: "),
        tracking.active_run(run_id="0" * 32),
    ):
        pass  # pragma: no cover
    assert mlflow.active_run() is None


def test_parent_run_id_nests_the_run(experiment_id):
    parent = tracking.create_run(experiment_id, "sweep", {"kind": "sweep"})
    with tracking.active_run(experiment_id=experiment_id, parent_run_id=parent) as rid:
        pass
    assert tracking.PARENT_TAG == "mlflow.parentRunId"
    assert tracking.get_run(rid).data.tags[tracking.PARENT_TAG] == parent
    assert status(parent) == "RUNNING"  # created, never made active


def test_a_run_is_resumed_by_id(experiment_id):
    with tracking.active_run(experiment_id=experiment_id) as rid:
        tracking.log_metrics({"val_accuracy": 0.5})
    with tracking.active_run(rid) as again:
        tracking.log_metrics({"test_accuracy": 0.6})
    assert again == rid
    metrics = tracking.get_run(rid).data.metrics
    assert metrics == {"val_accuracy": 0.5, "test_accuracy": 0.6}
    assert status(rid) == "FINISHED"


def test_create_terminate_and_reopen_a_run(experiment_id):
    rid = tracking.create_run(experiment_id, "parent", {"t": "1"})
    assert mlflow.active_run() is None
    assert tracking.get_run(rid).info.run_name == "parent"
    tracking.terminate(rid, "KILLED")
    assert status(rid) == "KILLED"
    tracking.set_running(rid)
    assert status(rid) == "RUNNING"


def test_get_run_of_an_unknown_id_is_none(experiment_id):
    assert tracking.get_run("f" * 32) is None


def test_log_params_to_the_active_run_and_by_id(experiment_id):
    other = tracking.create_run(experiment_id, "other", {})
    with tracking.active_run(experiment_id=experiment_id) as rid:
        tracking.log_params({"train.epochs": 3, "train.lr_decay_epochs": [2, 4], "x": None})
        tracking.log_params({"train.optimizer": "adam", "train.decay": [5]}, run_id=other)
    assert tracking.get_run(rid).data.params == {
        "train.epochs": "3",
        "train.lr_decay_epochs": "2,4",
        "x": "None",
    }
    assert tracking.get_run(other).data.params == {"train.optimizer": "adam", "train.decay": "5"}


def test_log_metrics_with_steps_and_by_id(experiment_id):
    import numpy as np

    other = tracking.create_run(experiment_id, "other", {})
    with tracking.active_run(experiment_id=experiment_id) as rid:
        for step, acc in enumerate([0.5, 0.7], start=1):
            tracking.log_metrics({"val_accuracy": np.float32(acc)}, step=step)
        tracking.log_metrics({"best": 1}, run_id=other)
    history = tracking.store.client().get_metric_history(rid, "val_accuracy")
    assert [(m.step, round(m.value, 6)) for m in history] == [(1, 0.5), (2, 0.7)]
    assert tracking.get_run(other).data.metrics == {"best": 1.0}
    assert "best" not in tracking.get_run(rid).data.metrics


def test_set_tags_on_the_active_run_and_by_id(experiment_id):
    other = tracking.create_run(experiment_id, "other", {})
    with tracking.active_run(experiment_id=experiment_id) as rid:
        tracking.set_tags({"a": "1", "b": "2"})
        tracking.set_tags({"c": "3", "d": "4"}, run_id=other)
    tags, other_tags = tracking.get_run(rid).data.tags, tracking.get_run(other).data.tags
    assert tags["a"] == "1" and tags["b"] == "2" and "c" not in tags
    assert other_tags["c"] == "3" and other_tags["d"] == "4" and "a" not in other_tags


def test_search_runs_has_the_columns_even_when_empty(experiment_id):
    columns = ("metrics.val_accuracy", "metrics.test_loss")
    df = tracking.search_runs(experiment_id, columns=columns)
    assert df.empty
    for column in ("run_id", "status", "start_time", "end_time", "tags.model.uri", *columns):
        assert column in df


def test_search_runs_newest_first_with_a_filter(experiment_id):
    made = []
    for acc in (0.9, 0.95, 0.8):
        with tracking.active_run(experiment_id=experiment_id) as rid:
            tracking.log_metrics({"val_accuracy": acc})
        made.append(rid)
    df = tracking.search_runs(experiment_id, columns=["metrics.test_accuracy"])
    assert list(df["run_id"]) == made[::-1]
    assert df["metrics.test_accuracy"].isna().all() and df["tags.model.uri"].isna().all()
    df = tracking.search_runs(experiment_id, "metrics.val_accuracy > 0.85")
    assert set(df["run_id"]) == set(made[:2])
    assert set(df["status"]) == {"FINISHED"}


def test_read_text_artifact_or_none(experiment_id):
    with tracking.active_run(experiment_id=experiment_id) as rid:
        tracking.log_text("actual,predicted\n7,7\n", "evaluation/predictions.csv")
    assert (
        tracking.read_text_artifact(rid, "evaluation/predictions.csv") == "actual,predicted\n7,7\n"
    )
    assert tracking.read_text_artifact(rid, "evaluation/missing.csv") is None
    run_obj = tracking.get_run(rid)  # the Run itself: the same text, without fetching it again
    assert (
        tracking.read_text_artifact(run_obj, "evaluation/predictions.csv")
        == "actual,predicted\n7,7\n"
    )
    assert tracking.read_text_artifact("0" * 32, "evaluation/predictions.csv") is None
