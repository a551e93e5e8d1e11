"""`dvc exp run` and queues: every experiment is a run in the main workspace's MLflow store."""

import io
import json
import sys
import time

import pandas as pd
import pytest

from tests.conftest import clone_of, mlflow_client, run, stage_env

pytestmark = pytest.mark.slow


def _queue_busy(project) -> bool:
    out = run(["dvc", "queue", "status"], project).stdout
    return any(word in out for word in (" Queued", " Running"))


def test_queue_with_two_workers_records_every_experiment(smoke_project, tmp_path):
    project = clone_of(smoke_project, tmp_path)
    env = stage_env()
    names = [f"lr-{i}" for i in range(4)]
    for name, lr in zip(names, ("0.001", "0.002", "0.003", "0.004"), strict=True):
        run(
            [
                "dvc",
                "exp",
                "run",
                "--queue",
                "-n",
                name,
                "-S",
                "train.optimizer=adam",
                "-S",
                f"train.learning_rate={lr}",
                "-S",
                "train.epochs=1",
            ],
            project,
            env,
        )
    try:
        run(["dvc", "queue", "start", "-j", "2"], project, env)
        deadline = time.monotonic() + 900
        while _queue_busy(project) and time.monotonic() < deadline:
            time.sleep(3)
        status = run(["dvc", "queue", "status"], project).stdout
    finally:
        run(["dvc", "queue", "stop", "--kill"], project, env, check=False)
    assert status.count("Success") == 4, status
    logs = "".join(run(["dvc", "queue", "logs", n], project, check=False).stdout for n in names)
    assert "database is locked" not in logs

    client = mlflow_client(project)
    exp = client.get_experiment_by_name("lenet5-mnist")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`dvc.exp_name` LIKE 'lr-%'")
    assert sorted(r.data.tags["dvc.exp_name"] for r in runs) == names  # 4 of 4, none lost
    for r in runs:
        assert r.info.status == "FINISHED"
        assert {"test_accuracy", "test_loss", "val_accuracy"} <= set(r.data.metrics)
        assert r.info.artifact_uri.startswith(exp.artifact_location)
    # No throwaway stores inside DVC's temporary copies of the repo.
    assert not list((project / ".dvc").rglob("mlflow.db"))
    assert not list((project / ".dvc").rglob("mlartifacts"))
    # The champion is the best on validation (register.metric), not on test.
    best = max(runs, key=lambda r: (r.data.metrics["val_accuracy"], -r.data.metrics["val_loss"]))
    champion = client.get_model_version_by_alias("lenet5-mnist", "champion")
    assert champion.run_id == best.info.run_id

    table = pd.read_csv(
        io.StringIO(
            run([sys.executable, "-m", "pipeline.compare", "--format", "csv"], project, env).stdout
        )
    )
    assert len(table) == 5  # the workspace run and the four experiments
    assert table["val_accuracy"].is_monotonic_decreasing  # ranked as register ranks
    assert table.loc[0, "champion"] == "*" and table.loc[0, "run_id"] == best.info.run_id
    assert set(table["dvc_exp"].dropna()) == set(names)


def test_lineage_answers_what_trained_the_champion(smoke_project):
    out = run([sys.executable, "-m", "pipeline.lineage", "--json"], smoke_project).stdout
    info = json.loads(out)
    run_id = json.loads((smoke_project / "data/train/run.json").read_text())["run_id"]
    assert info["run_id"] == run_id and info["aliases"] == ["champion"]
    head = run(["git", "rev-parse", "HEAD"], smoke_project).stdout.strip()
    assert info["git_commit"] == head
    assert info["params"]["train.max_samples"] == "2000"
    assert set(info["data"]) == {"train.md5", "val.md5", "test.md5"}
    assert info["metrics"]["test_accuracy"] > 0
    text = run([sys.executable, "-m", "pipeline.lineage"], smoke_project).stdout
    assert f"run_id: {run_id}" in text


def test_compare_markdown_and_unfinished_runs(smoke_project, tmp_path):
    project = clone_of(smoke_project, tmp_path)
    client = mlflow_client(project)
    exp = client.get_experiment_by_name("lenet5-mnist").experiment_id
    client.set_terminated(client.create_run(exp).info.run_id, "KILLED")
    md = run([sys.executable, "-m", "pipeline.compare", "--format", "md"], project).stdout
    assert md.startswith("| champion") and md.count("\n") == 3  # header, rule, one run
    everything = run(
        [sys.executable, "-m", "pipeline.compare", "--all", "--format", "csv"], project
    ).stdout
    assert "KILLED" in everything
