"""``python -m pipeline.compare``: the ranked table of runs (pure, on a search_runs-shaped
frame) and, on the smoke project, register's promotion test of a run against an alias."""

import json
import math
import sys

import pandas as pd
import pytest

from pipeline.compare import METRICS, PARAMS, comparison_table, render
from pipeline.testing.project import run, stage_env

T0 = pd.Timestamp("2024-05-01 12:00:00", tz="UTC")


def runs_frame(rows: list[dict]) -> pd.DataFrame:
    """Rows shaped like ``mlflow.search_runs`` output; unset columns are missing or NaN."""
    return pd.DataFrame(rows)


def a_run(run_id, acc, loss, *, minutes=2.0, started=0, **extra):
    start = T0 + pd.Timedelta(minutes=started)
    return {
        "run_id": run_id,
        "status": "FINISHED",
        "start_time": start,
        "end_time": start + pd.Timedelta(minutes=minutes),
        "tags.mlflow.runName": f"name-{run_id}",
        "tags.dvc.exp_name": f"exp-{run_id}",
        "params.model.activation": "relu",
        "params.train.optimizer": "adam",
        "params.train.learning_rate": "0.001",
        "params.train.epochs": "2",
        "metrics.val_accuracy": acc,
        "metrics.val_loss": loss,
        "metrics.best_val_accuracy": acc,
        "metrics.test_accuracy": acc - 0.01,
        "metrics.test_loss": loss + 0.01,
        **extra,
    }


@pytest.fixture
def runs():
    return runs_frame(
        [
            a_run("r1", 0.95, 0.20, started=0),
            a_run("r2", 0.97, 0.15, started=1),  # the best
            a_run("r3", 0.95, 0.10, started=2),  # ties r1 on accuracy, lower loss
            a_run("r4", 0.90, 0.30, started=3, minutes=12.34),
        ]
    )


def test_best_val_accuracy_first_then_lower_val_loss(runs):
    table = comparison_table(runs, None)
    assert list(table["run_id"]) == ["r2", "r3", "r1", "r4"]
    assert list(table.index) == [0, 1, 2, 3]  # renumbered after sorting


def test_an_accuracy_tie_with_the_same_loss_puts_the_newest_first():
    runs = runs_frame([a_run("old", 0.9, 0.2, started=0), a_run("new", 0.9, 0.2, started=5)])
    assert list(comparison_table(runs, None)["run_id"]) == ["new", "old"]


def test_another_metric_ranks_by_it_and_its_loss(runs):
    runs.loc[runs["run_id"] == "r4", "metrics.test_accuracy"] = 0.99
    table = comparison_table(runs, None, metric="test_accuracy")
    assert table["run_id"].iloc[0] == "r4"


def test_the_champion_has_the_star_and_only_it(runs):
    table = comparison_table(runs, "r1")
    assert dict(zip(table["run_id"], table["champion"], strict=True)) == {
        "r1": "*",
        "r2": "",
        "r3": "",
        "r4": "",
    }
    assert set(comparison_table(runs, None)["champion"]) == {""}
    assert set(comparison_table(runs, "gone")["champion"]) == {""}


def test_columns_names_params_and_metrics(runs):
    table = comparison_table(runs, None)
    params = [p.split(".", 1)[1] for p in PARAMS]
    assert list(table.columns) == [
        "champion",
        "run",
        "dvc_exp",
        "status",
        *params,
        *METRICS,
        "minutes",
        "run_id",
    ]
    best = table.iloc[0]
    assert best["run"] == "name-r2" and best["dvc_exp"] == "exp-r2"
    assert best["status"] == "FINISHED"
    assert best["activation"] == "relu" and best["optimizer"] == "adam"
    assert best["learning_rate"] == "0.001" and best["epochs"] == "2"
    assert best["val_accuracy"] == 0.97 and best["test_loss"] == 0.16


def test_missing_columns_become_none_or_nan(runs):
    runs = runs.drop(
        columns=[
            "tags.mlflow.runName",
            "tags.dvc.exp_name",
            "params.train.optimizer",
            "metrics.test_accuracy",
        ]
    )
    table = comparison_table(runs, None)
    assert table["run"].tolist() == [None] * 4
    assert table["dvc_exp"].tolist() == [""] * 4  # a run outside any DVC experiment
    assert table["optimizer"].tolist() == [None] * 4
    assert table["padding"].tolist() == [None] * 4  # never logged by any run
    assert all(math.isnan(v) for v in table["test_accuracy"])
    assert list(table["run_id"]) == ["r2", "r3", "r1", "r4"]


def test_a_run_without_the_metric_comes_last():
    runs = runs_frame(
        [a_run("none", float("nan"), float("nan"), started=9), a_run("some", 0.5, 0.9)]
    )
    assert list(comparison_table(runs, None)["run_id"]) == ["some", "none"]


def test_a_run_outside_dvc_has_an_empty_experiment(runs):
    runs.loc[runs["run_id"] == "r2", "tags.dvc.exp_name"] = None
    table = comparison_table(runs, None)
    assert table["dvc_exp"].iloc[0] == ""


def test_metrics_are_rounded_to_four_places():
    runs = runs_frame([a_run("r", 0.987654321, 0.123456789)])
    row = comparison_table(runs, None).iloc[0]
    assert row["val_accuracy"] == 0.9877 and row["val_loss"] == 0.1235


def test_minutes_is_the_duration_to_a_tenth(runs):
    table = comparison_table(runs, None).set_index("run_id")
    assert table.loc["r4", "minutes"] == 12.3
    assert table.loc["r1", "minutes"] == 2.0


def test_an_unfinished_run_has_no_minutes():
    row = a_run("running", 0.5, 0.5, status="RUNNING", end_time=pd.NaT)
    table = comparison_table(runs_frame([row, a_run("done", 0.4, 0.5)]), None)
    assert table["status"].tolist() == ["RUNNING", "FINISHED"]
    assert math.isnan(table["minutes"].iloc[0]) and table["minutes"].iloc[1] == 2.0


@pytest.fixture
def small_table():
    runs = runs_frame([a_run("r1", 0.95, 0.2), a_run("r2", 0.97, 0.15, started=1)])
    return comparison_table(runs, "r2")


def test_render_table(small_table):
    text = render(small_table, "table")
    lines = text.splitlines()
    assert text.endswith("\n") and len(lines) == 3  # the header and one line per run
    assert lines[0].split()[:4] == ["champion", "run", "dvc_exp", "status"]
    assert lines[1].split()[0] == "*" and "r2" in lines[1]
    assert "r1" in lines[2] and "0.95" in lines[2]


def test_render_markdown(small_table):
    text = render(small_table, "md")
    lines = text.splitlines()
    assert text.endswith("\n") and len(lines) == 4  # header, rule, two runs
    assert lines[0].startswith("|") and "champion" in lines[0] and "run_id" in lines[0]
    assert set(lines[1]) <= set("|-: ")
    assert "| *" in lines[2] and "r2" in lines[2]


def test_render_csv_parses_back(small_table, tmp_path):
    text = render(small_table, "csv")
    path = tmp_path / "t.csv"
    path.write_text(text)
    back = pd.read_csv(path, keep_default_na=False)
    assert list(back.columns) == list(small_table.columns)
    assert back["run_id"].tolist() == ["r2", "r1"]
    assert back["champion"].tolist() == ["*", ""]
    assert back["val_accuracy"].tolist() == [0.97, 0.95]


# --- The promotion test on a real project --------------------------------------------------


def errors_of(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if " ERROR " in ln]


@pytest.mark.slow
def test_against_the_champion_itself_and_bad_arguments(smoke_project):
    run_id = json.loads((smoke_project / "data/train/run.json").read_text())["run_id"]
    compare = [sys.executable, "-m", "pipeline.compare", "--against"]

    proc = run([*compare, "champion", run_id], smoke_project, stage_env())
    out = proc.stdout
    header, row = out.splitlines()[:2]
    assert header.split() == [
        "images",
        "champion_only",
        "candidate_only",
        "gain_pts",
        "ci95_pts",
        "p_value",
        "decision",
    ]
    assert row.split()[2:4] == ["0", "0"], out  # "test (N)": no discordant image
    assert "(0 vs 0 disagreements, p = 1)" in out, out
    assert "+0.00 pts" in out, out
    assert f"{run_id} vs lenet5-mnist@champion (v1): register would keep: " in out, out
    assert "not better" in out, out

    proc = run([*compare, "nosuchalias", run_id], smoke_project, stage_env(), check=False)
    assert proc.returncode == 1, proc.stderr
    errors = errors_of(proc.stderr)
    assert len(errors) == 1 and "nosuchalias" in errors[0], proc.stderr
    assert "no lenet5-mnist@nosuchalias yet" in errors[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""

    proc = run([*compare, "champion", "0000"], smoke_project, stage_env(), check=False)
    assert proc.returncode == 1, proc.stderr
    errors = errors_of(proc.stderr)
    assert errors == [e for e in errors if "run 0000: no such run with a logged model" in e]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
