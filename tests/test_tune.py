"""pipeline.tune: a shared Optuna study on PostgreSQL and SQLite, pruning, lost workers, the
exact budget, and the winner reproduced by `dvc exp run`."""

import json
import shlex
import signal
import subprocess
import sys
import time

import optuna
import pytest
import yaml

from pipeline.core.params import ParamsError, parse_params
from pipeline.tune import exp_command, storage_url
from tests.conftest import ROOT, clone_of, mlflow_client, run, set_params, stage_env
from tests.postgres import PASSWORD

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


def raw_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.mark.parametrize(
    ("tune", "message"),
    [
        ({"n_trail": 5}, "tune.n_trail: unknown key"),
        ({"pruner": "asha"}, "tune.pruner: expected one of 'median', 'hyperband', 'none'"),
        ({"n_trials": 0}, "tune.n_trials: must be >= 1"),
        ({"study": "my sweep"}, "tune.study: letters, digits"),
        (
            {"space": {"train.learning_rate": {"low": 0.1, "high": 0.01}}},
            "tune.space.train.learning_rate: low (0.1) > high (0.01)",
        ),
        ({"space": {"train.lr": {"low": 0.1, "high": 1}}}, "tune.space.train.lr: not a train"),
        ({"space": {"evaluate.misclassified_shown": {"choices": [1]}}}, "not a train or model"),
        (
            {"space": {"train.batch_size": {"choices": [64, "128"]}}},
            "tune.space.train.batch_size.choices[1]: expected an integer, got '128'",
        ),
        (
            {"space": {"model.activation": {"choices": ["relu", "gelu"]}}},
            "tune.space.model.activation.choices[1]: expected one of 'tanh', 'relu'",
        ),
        (
            {"space": {"train.batch_size": {"low": 32.5, "high": 256}}},
            "tune.space.train.batch_size.low: expected an integer",
        ),
        (
            {"space": {"train.learning_rate": {"low": 0, "high": 0.1}}},
            "tune.space.train.learning_rate.low: must be > 0",
        ),
        ({"space": {"train.optimizer": {"low": 1, "high": 2}}}, "has no range; use choices"),
        ({"space": {"train.epochs": {"low": 1, "high": 9}}}, "set by tune.epochs"),
        ({"space": {"train.seed": {"low": 1, "high": 9, "step": 2}}}, "seed.step: unknown key"),
    ],
)
def test_bad_tune_sections_name_the_key(tune, message):
    raw = raw_params()
    raw["tune"].update(tune)
    with pytest.raises(ParamsError) as e:
        parse_params(raw)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_tune_section_fails_the_command_in_one_line_before_training(tmp_path):
    raw = raw_params()
    raw["tune"]["space"] = {"train.learning_rate": {"low": 0.1, "high": 0.01}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    proc = run(
        [sys.executable, "-m", "pipeline.tune"],
        tmp_path,
        stage_env(PYTHONPATH=str(ROOT)),
        check=False,
    )
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "tune.space.train.learning_rate: low (0.1) > high" in errors[0]
    assert not (tmp_path / "optuna.db").exists()


def test_printed_command_parses_back_to_the_same_values():
    # DVC parses -S values with Hydra's override grammar.
    from hydra.core.override_parser.overrides_parser import OverridesParser

    values = {
        "train.learning_rate": 1.2345678901234567e-06,
        "train.momentum": 0.1 + 0.2,
        "train.batch_size": 64,
        "train.max_samples": None,
        "train.nesterov": True,
        "model.activation": "relu",
    }
    command = exp_command("s-t3", values)
    parser = OverridesParser.create()
    sets = shlex.split(command)[6::2]
    parsed = {o.key_or_group: o.value() for o in map(parser.parse_override, sets)}
    assert shlex.split(command)[:5] == ["dvc", "exp", "run", "-n", "s-t3"]
    assert parsed == values
    assert all(type(parsed[k]) is type(v) for k, v in values.items())


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
            mlflow_client(project).get_metric_history(r.info.run_id, "val_accuracy")
        )
        assert "test_accuracy" not in r.data.metrics  # the test split is never read
        assert "model.uri" not in r.data.tags  # trials never become champion
    parent = mlflow_client(project).get_run(_parent(url))
    assert parent.info.status == "FINISHED" and parent.data.tags["optuna.best_trial"] == "0"

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
