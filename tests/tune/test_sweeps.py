"""pipeline.tune end to end: a shared Optuna study on PostgreSQL and SQLite, pruning, lost
workers, the exact budget, and the winner reproduced by `dvc exp run`."""

import json
import shlex
import shutil
import signal
import subprocess
import sys
import time

import optuna
import pytest
import yaml

from pipeline.testing.postgres import PASSWORD
from pipeline.testing.project import clone_of, run, set_params, stage_env
from pipeline.tune.storage import storage_url
from tests.stores import mlflow_client

GOOD_LR = 0.002  # adam/relu: ~0.8 val_accuracy after 1 epoch on the smoke slice
# Every sampled trial is hopeless (lr 1e-6 learns nothing in 2 epochs); the enqueued good
# trial sets the median, so any hopeless trial that starts after it finished is pruned.
TINY = {
    "model__activation": "relu",
    "train__optimizer": "adam",
    "tune__epochs": 2,
    "tune__sampler": "random",
    "tune__pruner": "median",
    "tune__pruner_startup_trials": 1,
    "tune__pruner_warmup_epochs": 0,
    "tune__space": {"train.learning_rate": {"low": 1e-6, "high": 2e-6, "log": True}},
}


def _trials(url: str, study: str) -> list:
    return optuna.load_study(study_name=study, storage=url).get_trials()


def _children(project, parent_run_id: str) -> list:
    client = mlflow_client(project)
    exp = client.get_experiment_by_name("lenet5-mnist").experiment_id
    return client.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'")


@pytest.fixture(scope="module")
def pg_sweep(smoke_project, postgres, tmp_path_factory):
    """A 4-trial study run by `--workers 2` on PostgreSQL (smoke slice, 2 epochs a trial)."""
    project = clone_of(smoke_project, tmp_path_factory.mktemp("pg-sweep"))
    set_params(project, tune__study="pg", tune__n_trials=4, **TINY)
    env = stage_env(OPTUNA_STORAGE=postgres.create_database("tune_pg"))
    url = storage_url(env)  # postgresql:// -> postgresql+psycopg2://
    study = optuna.create_study(study_name="pg", storage=url, direction="maximize")
    study.enqueue_trial({"train.learning_rate": GOOD_LR})
    proc = run([sys.executable, "-m", "pipeline.tune", "--workers", "2"], project, env)
    return project, url, env, proc


@pytest.mark.slow
def test_two_workers_share_one_postgres_study_with_an_exact_budget(pg_sweep):
    project, url, _, proc = pg_sweep
    trials = _trials(url, "pg")
    states = [t.state.name for t in trials]
    assert len(trials) == 4 and set(states) <= {"COMPLETE", "PRUNED"}, states
    assert "PRUNED" in states  # hopeless trials stop early
    assert trials[0].params["train.learning_rate"] == GOOD_LR and states[0] == "COMPLETE"
    workers = {r.data.tags["optuna.worker"] for r in _children(project, _parent(url))}
    assert len(workers) == 2  # both processes trained

    runs = {int(r.data.tags["optuna.trial"]): r for r in _children(project, _parent(url))}
    assert sorted(runs) == [0, 1, 2, 3]  # one MLflow run per trial, all under the parent
    for t in trials:
        r = runs[t.number]
        assert r.data.tags["optuna.state"] == t.state.name and r.info.status == "FINISHED"
        assert r.data.tags["optuna.study"] == "pg"
        assert r.data.params["train.epochs"] == "2" and r.data.params["train.threads"] == "1"
        assert float(r.data.params["train.learning_rate"]) == t.params["train.learning_rate"]
        assert len(t.intermediate_values) == len(
            mlflow_client(project).get_metric_history(r.info.run_id, "curves/val_accuracy")
        )
        # Told apart at a glance in the runs table: a pruned trial's name says so; a
        # complete one shows its final val_accuracy.
        if t.state.name == "PRUNED":
            assert r.info.run_name == f"pg-trial-{t.number} (pruned)"
        else:
            assert r.info.run_name == f"pg-trial-{t.number}"
            assert r.data.metrics["val_accuracy"] == pytest.approx(t.value)
        assert "test_accuracy" not in r.data.metrics  # the test split is never read
        assert "model.uri" not in r.data.tags  # trials never become champion
    parent = mlflow_client(project).get_run(_parent(url))
    assert parent.info.status == "FINISHED" and parent.data.tags["optuna.best_trial"] == "0"
    assert parent.data.tags["optuna.best_run_id"] == runs[0].info.run_id  # a link to it
    # The parent carries the search: space, budget, sampler, pruner and the fixed params.
    assert parent.data.params["tune.n_trials"] == "4"
    assert parent.data.params["space.train.learning_rate"].endswith("(log)")
    assert {"tune.sampler", "tune.pruner", "train.batch_size", "model.activation"} <= set(
        parent.data.params
    )
    assert parent.data.metrics["sweep/best_val_accuracy"] == pytest.approx(trials[0].value)
    assert parent.data.metrics["sweep/trials_pruned"] == states.count("PRUNED")

    best = yaml.safe_load((project / "data/tune/best.yaml").read_text())
    assert best["trial"] == 0 and best["val_accuracy"] == trials[0].value
    assert proc.stdout.strip() == best["command"]
    assert PASSWORD not in proc.stderr  # the storage URL's password is never logged


def _parent(url: str) -> str:
    return optuna.load_study(study_name="pg", storage=url).user_attrs["mlflow_parent_run_id"]


@pytest.mark.slow
def test_best_trial_command_reproduces_its_val_accuracy_and_the_study_resumes(pg_sweep):
    project, url, env, _ = pg_sweep
    best = yaml.safe_load((project / "data/tune/best.yaml").read_text())
    assert {"train.epochs", "train.seed", "train.max_samples", "train.threads"} <= set(
        best["params"]
    )
    run(shlex.split(best["command"]), project, env)
    metrics = json.loads((project / "data/eval/metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.5  # a normal, evaluated pipeline run
    client = mlflow_client(project)
    exp = client.get_experiment_by_name("lenet5-mnist").experiment_id
    [exp_run] = client.search_runs(
        [exp], filter_string=f"tags.`dvc.exp_name` = '{shlex.split(best['command'])[4]}'"
    )
    assert "model.uri" in exp_run.data.tags
    assert exp_run.data.metrics["val_accuracy"] == best["val_accuracy"]  # exactly

    # The same study name resumes the study: one more trial for a budget of 5, not 5 more.
    set_params(project, tune__n_trials=5)
    proc = run([sys.executable, "-m", "pipeline.tune"], project, env)
    assert len(_trials(url, "pg")) == 5
    assert "4 of 5 trials counted" in proc.stderr


@pytest.mark.slow
def test_a_worker_killed_mid_trial_loses_only_that_trial(smoke_project, tmp_path):
    """Two independent commands share a SQLite study (as two machines would a PostgreSQL
    one); one is SIGKILLed mid-trial, the other fails its trial and finishes the budget."""
    project = clone_of(smoke_project, tmp_path)
    set_params(project, tune__study="kill", tune__n_trials=3, **TINY)
    set_params(project, tune__pruner="none")
    env = stage_env()
    cmd = [sys.executable, "-m", "pipeline.tune", "--heartbeat", "1"]
    victim = subprocess.Popen(cmd, cwd=project, env=env, stderr=subprocess.PIPE, text=True)
    seen = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = victim.stderr.readline()
        seen.append(line)
        if "epoch 1/2" in line or not line:
            break
    assert victim.poll() is None, "".join(seen)
    survivor = subprocess.Popen(cmd, cwd=project, env=env, stderr=subprocess.PIPE, text=True)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    _, err = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, err[-3000:]

    url = f"sqlite:///{project / 'optuna.db'}"
    trials = _trials(url, "kill")
    states = sorted(t.state.name for t in trials)
    assert states == ["COMPLETE", "COMPLETE", "COMPLETE", "FAIL"], states
    [lost] = [t for t in trials if t.state.name == "FAIL"]
    assert lost.number == 0  # the victim's first trial
    assert "lost its worker" in err
    lost_run = mlflow_client(project).get_run(lost.user_attrs["mlflow_run_id"])
    assert lost_run.info.status == "FAILED" and lost_run.data.tags["optuna.state"] == "FAIL"


@pytest.mark.slow
def test_two_workers_on_a_new_project_create_both_stores_once(smoke_project, tmp_path):
    """`--workers 2` where neither mlflow.db nor optuna.db exists yet: both workers open
    the new stores at once (issue 29: "duplicate column name: step" in one of them), and
    every trial is recorded in both."""
    project = clone_of(smoke_project, tmp_path)
    (project / "mlflow.db").unlink()
    shutil.rmtree(project / "mlartifacts")
    assert not (project / "optuna.db").exists()
    set_params(project, tune__study="new", tune__n_trials=2, **{**TINY, "tune__epochs": 1})
    set_params(project, tune__pruner="none")
    run([sys.executable, "-m", "pipeline.tune", "--workers", "2"], project)
    trials = _trials(f"sqlite:///{project / 'optuna.db'}", "new")
    assert sorted(t.state.name for t in trials) == ["COMPLETE", "COMPLETE"]
    runs = {t.user_attrs["mlflow_run_id"] for t in trials}
    client = mlflow_client(project)
    assert {client.get_run(r).info.status for r in runs} == {"FINISHED"}
