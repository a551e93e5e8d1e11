"""The tracking tests' store: a real local SQLite MLflow store in each test's tmp_path."""

import shutil

import mlflow
import pytest

from pipeline.core import tracking


@pytest.fixture
def experiment_id(tmp_path, tmp_path_factory, monkeypatch):
    """A fresh local store in tmp_path (the default: no MLFLOW_TRACKING_URI) and its "exp".

    Creating MLflow's schema takes seconds, so an empty, migrated database is made once
    per session and copied into each test's workspace.
    """
    template = tmp_path_factory.getbasetemp() / "mlflow-template.db"
    if not template.exists():
        mlflow.MlflowClient(tracking_uri=f"sqlite:///{template}").search_experiments()
    shutil.copyfile(template, tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    # set, then deleted: monkeypatch then removes the variable that mlflow.set_tracking_uri
    # exports, instead of leaving it to the next test
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    yield tracking.connect("exp")
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)
