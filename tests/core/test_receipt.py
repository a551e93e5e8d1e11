"""What a store without a champion is told: the cause and the command that fixes it."""

import json

from pipeline.core.receipt import (
    StoreFacts,
    foreign_outputs,
    no_champion,
    read_json,
    receipt,
    workspace_run_id,
)

STORE = "the local store mlflow.db"


def _facts(finished=0, run=None, known=False):
    return StoreFacts(STORE, finished, run, known)


def test_an_empty_store_and_no_outputs_says_make_repro(tmp_path):
    line = no_champion("m", "champion", _facts(), tmp_path)
    assert (
        line
        == f"no m@champion in {STORE}: it has no runs yet: `make repro` trains and registers one"
    )  # noqa: E501


def test_outputs_of_another_store_say_retrain_here_or_point_at_it(tmp_path):
    facts = _facts(finished=0, run="abc123", known=False)
    line = no_champion("m", "champion", facts, tmp_path)
    assert "run abc123" in line and "dvc repro -f train" in line
    assert "MLFLOW_TRACKING_URI" in line and "make repro" not in line
    assert "\n" not in line
    assert foreign_outputs(facts) in line


def test_runs_without_a_champion_say_register_not_make_repro(tmp_path):
    (tmp_path / "data/register").mkdir(parents=True)
    made = receipt("http://team:5000", "m", "champion", "7", "r1")
    (tmp_path / "data/register/store.json").write_text(json.dumps(made))
    line = no_champion("m", "champion", _facts(finished=3, run="r1", known=True), tmp_path)
    assert "3 finished run(s)" in line and "python -m pipeline.register" in line
    assert "http://team:5000" in line and "make repro" not in line


def test_outputs_of_this_store_are_not_foreign():
    assert foreign_outputs(_facts(run="r", known=True)) is None
    assert foreign_outputs(_facts(run=None)) is None


def test_workspace_files_missing_or_broken_read_as_none(tmp_path):
    assert workspace_run_id(tmp_path) is None
    (tmp_path / "data/train").mkdir(parents=True)
    (tmp_path / "data/train/run.json").write_text("{not json")
    assert workspace_run_id(tmp_path) is None
    assert read_json(tmp_path / "data/train/run.json") is None
    (tmp_path / "data/train/run.json").write_text('{"run_id": "r9", "experiment_id": "1"}')
    assert workspace_run_id(tmp_path) == "r9"


def test_receipt_names_store_model_version_and_run():
    assert receipt(STORE, "m", "champion", "2", "r") == {
        "store": STORE,
        "model": "m@champion",
        "version": 2,
        "run_id": "r",
    }
