"""`dvc exp run` and queues: every experiment is a run in the main workspace's MLflow store."""

import io
import json
import re
import shutil
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

from pipeline.core.data import file_md5
from pipeline.testing.project import clone_of, run, stage_env
from tests.stores import mlflow_client

pytestmark = pytest.mark.slow


GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]


def _finished_experiments(project) -> int:
    """Experiments with a result: DVC keeps each as a git ref refs/exps/<baseline commit,
    split after 2 characters>/<name>; its queue's stash and executors use other names
    under refs/exps (celery/, exec/, temp/)."""
    refs = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], project).stdout
    return sum(1 for ref in refs.split() if re.fullmatch(r"refs/exps/[0-9a-f]{2}/.+", ref))


def _queue_busy(project) -> bool:
    out = run(["dvc", "queue", "status"], project).stdout
    return any(word in out for word in (" Queued", " Running"))


def exp_metrics(project, *args: str) -> dict[str, dict]:
    """{name: {"test_accuracy": …, "val_accuracy": …, …}} for every row of `dvc exp show`."""
    rows = json.loads(run(["dvc", "exp", "show", "--json", *args], project).stdout)
    out = {}
    for baseline in rows:
        revs = [baseline] + [r for e in baseline.get("experiments") or [] for r in e["revs"]]
        for rev in revs:
            files = (rev.get("data") or {}).get("metrics") or {}
            out[rev.get("name") or rev["rev"]] = {
                k: v for f in files.values() for k, v in (f.get("data") or {}).items()
            }
    return out


@pytest.fixture(scope="module")
def queued(smoke_project, tmp_path_factory):
    """The smoke project with its run committed as the baseline, then a 2×1 grid queued in
    one command and run by 2 workers at once. (Queue workers run in DVC's temporary copies
    of the repo, as `dvc exp run --temp` does: one path, tested once.)

    The MLflow store is removed first: the two workers' train stages are a new project's
    first use, and both create the store at the same moment (issue 29: one of them used
    to fail in MLflow's schema migrations).

    Two experiments are enough for two workers writing one store at the same time; the
    grid's product is test_a_grid_queues_the_product_of_the_values' (each experiment
    here is a whole pipeline run, 40-50 s on 2 cores)."""
    project = clone_of(smoke_project, tmp_path_factory.mktemp("queued"))
    env = stage_env()
    run(["git", "add", "-A"], project)  # metrics and plot data are git's to keep
    run([*GIT, "commit", "-qm", "baseline run"], project)
    (project / "mlflow.db").unlink()
    shutil.rmtree(project / "mlartifacts")
    run(
        [
            "dvc", "exp", "run", "--queue",
            "-S", "train.learning_rate=0.001,0.002",
            "-S", "train.optimizer=adam",
            "-S", "train.epochs=1",
        ],
        project,
        env,
    )  # fmt: skip
    try:
        # Not through a pipe: the workers DVC spawns inherit it, and reading it to its end
        # would wait for the whole queue.
        subprocess.run(
            ["dvc", "queue", "start", "-j", "2"],
            cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            timeout=120, check=True,
        )  # fmt: skip
        # Each `dvc queue status` is a DVC process (1.6 CPU-seconds) and an experiment
        # here takes 40-50 s: DVC is asked once both experiments have their git ref (a
        # `git` call, milliseconds), or every 30 s in case one failed and never will.
        deadline, asked = time.monotonic() + 900, time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(2)
            if _finished_experiments(project) < 2 and time.monotonic() - asked < 30:
                continue
            if not _queue_busy(project):
                break
            asked = time.monotonic()
        status = run(["dvc", "queue", "status"], project).stdout
    finally:
        run(["dvc", "queue", "stop", "--kill"], project, env, check=False)
    return project, status


def test_queue_with_two_workers_records_every_experiment(queued):
    project, status = queued
    env = stage_env()
    assert status.count("Success") == 2, status
    names = sorted(n for n in exp_metrics(project) if n not in ("workspace", "main"))
    assert len(names) == 2
    logs = "".join(run(["dvc", "queue", "logs", n], project, check=False).stdout for n in names)
    assert "database is locked" not in logs

    client = mlflow_client(project)
    exp = client.get_experiment_by_name("lenet5-mnist")
    runs = [
        r
        for r in client.search_runs([exp.experiment_id])
        if r.data.tags.get("dvc.exp_name") in names
    ]
    assert sorted(r.data.tags["dvc.exp_name"] for r in runs) == names  # 2 of 2, none lost
    for r in runs:
        assert r.info.status == "FINISHED"
        assert {"test_accuracy", "test_loss", "val_accuracy"} <= set(r.data.metrics)
        assert r.info.artifact_uri.startswith(exp.artifact_location)
    # No throwaway stores inside DVC's temporary copies of the repo.
    assert not list((project / ".dvc").rglob("mlflow.db"))
    assert not list((project / ".dvc").rglob("mlartifacts"))
    for r in runs:  # experiments of a clean commit
        assert r.data.tags["git.dirty"] == "false", r.data.tags["dvc.exp_name"]
    # The best on validation (register.metric), not on test, holds @champion, or
    # @challenger if it was not significantly better than the champion on the test images.
    best = max(runs, key=lambda r: (r.data.metrics["val_accuracy"], -r.data.metrics["val_loss"]))
    champion = client.get_model_version_by_alias("lenet5-mnist", "champion")
    holders = {champion.run_id}
    if champion.run_id != best.info.run_id:
        holders.add(client.get_model_version_by_alias("lenet5-mnist", "challenger").run_id)
    assert best.info.run_id in holders

    table = pd.read_csv(
        io.StringIO(
            run([sys.executable, "-m", "pipeline.compare", "--format", "csv"], project, env).stdout
        )
    )
    assert len(table) == 2  # the two queued experiments (a new store)
    assert table["val_accuracy"].is_monotonic_decreasing  # ranked as register ranks
    assert table.loc[0, "run_id"] == best.info.run_id
    assert table.loc[table["champion"] == "*", "run_id"].tolist() == [champion.run_id]
    assert set(names) <= set(table["dvc_exp"].dropna())


def test_exp_show_lists_the_metrics_of_every_experiment(queued):
    project, _ = queued
    rows = exp_metrics(project)
    assert len(rows) == 4  # workspace, main, 2 queued
    for name, metrics in rows.items():
        assert {"test_accuracy", "test_loss", "val_accuracy", "train_seconds"} <= set(metrics), name
        assert 0 < metrics["test_accuracy"] <= 1
        robust = metrics.get("robust") or {}  # nested in metrics.json: robust.<name>_accuracy
        assert {"shift_2px_accuracy", "inverted_accuracy", "thin_accuracy"} <= set(robust), name
    # Class counts are data facts, not metrics columns.
    assert not any("count" in k or "per_class" in k for m in rows.values() for k in m)
    baseline = json.loads((project / "data/eval/metrics.json").read_text())
    assert rows["main"]["test_accuracy"] == baseline["test_accuracy"]
    # Test metrics come first, where a narrow terminal still shows them.
    table = run(["dvc", "exp", "show", "--csv"], project).stdout.splitlines()[0].split(",")
    metric_cols = [c for c in table if c in ("test_accuracy", "val_accuracy", "train_seconds")]
    assert metric_cols[0] == "test_accuracy"


def test_metrics_diff_and_plots_diff_compare_two_experiments(queued, tmp_path):
    project, _ = queued
    rows = exp_metrics(project)
    a, b = sorted(n for n in rows if n not in ("workspace", "main"))[:2]
    diff = json.loads(run(["dvc", "metrics", "diff", "main", a, "--json"], project).stdout)
    change = diff["data/eval/metrics.json"]["test_accuracy"]
    assert change["old"] == rows["main"]["test_accuracy"]
    assert change["new"] == rows[a]["test_accuracy"]
    assert change["diff"] == pytest.approx(change["new"] - change["old"])
    text = run(["dvc", "metrics", "diff", "main", a], project).stdout
    assert "test_accuracy" in text and "val_accuracy" in text

    run(["dvc", "plots", "diff", a, b, "-o", str(tmp_path / "plots")], project)
    html = (tmp_path / "plots/index.html").read_text()
    for title in ("Loss", "Accuracy", "Confusion matrix"):
        assert title in html
    assert html.count(f'"rev": "{a}"') > 0 and html.count(f'"rev": "{b}"') > 0
    images = {p.name for p in (tmp_path / "plots/static").iterdir()}
    for rev in (a, b):
        assert {f"{rev}_data_train_learning_curves.png", f"{rev}_data_eval_confusion.png"} <= images


def test_exp_apply_restores_metrics_plots_and_model(queued, tmp_path):
    project = clone_of(queued[0], tmp_path / "apply")
    rows = exp_metrics(project)
    name = next(n for n in rows if n not in ("workspace", "main"))
    ref = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], project).stdout
    ref = next(r for r in ref.split() if r.endswith("/" + name))
    run(["dvc", "exp", "apply", name], project)
    for path in ("data/eval/metrics.json", "data/train/metrics.json", "data/train/history.csv"):
        committed = run(["git", "show", f"{ref}:{path}"], project).stdout
        assert (project / path).read_text() == committed, path  # byte for byte
    lock = yaml.safe_load(run(["git", "show", f"{ref}:dvc.lock"], project).stdout)
    model = next(o for o in lock["stages"]["train"]["outs"] if o["path"].endswith("model.keras"))
    assert file_md5(project / "data/train/model.keras") == model["md5"]
    assert run(["dvc", "status", "--json"], project).stdout.strip() in ("{}", "")


def test_a_grid_queues_the_product_of_the_values(smoke_project, tmp_path):
    project = clone_of(smoke_project, tmp_path)
    cmd = ["dvc", "exp", "run", "--queue", "-S", "train.learning_rate=0.001,0.002,0.005"]
    run([*cmd, "-S", "train.optimizer=adam,sgd"], project)
    status = run(["dvc", "queue", "status"], project).stdout
    rows = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    run(["dvc", "queue", "remove", "--all"], project, check=False)
    assert status.count(" Queued") == 6, status
    grid = set()
    for exp in rows[1].get("experiments") or []:
        train = exp["revs"][0]["data"]["params"]["params.yaml"]["data"]["train"]
        grid.add((train["learning_rate"], train["optimizer"]))
    assert grid == {(lr, o) for lr in (0.001, 0.002, 0.005) for o in ("adam", "sgd")}


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
