"""Reading a project's MLflow store with MLflow's own client, independently of the
pipeline's tracking package, to check what the pipeline wrote."""

from __future__ import annotations

from pathlib import Path

import mlflow


def mlflow_client(project: Path) -> mlflow.MlflowClient:
    """An MlflowClient on a project's default store."""
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")


def newest_run(project: Path):
    """The most recently started run of the project's experiment."""
    client = mlflow_client(project)
    exp = client.get_experiment_by_name("lenet5-mnist").experiment_id
    return client.search_runs(exp, order_by=["start_time DESC"], max_results=1)[0]
