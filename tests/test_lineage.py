"""``python -m pipeline.lineage``: what trained the champion, from stand-ins for MLflow's
version and run, and on the smoke project as JSON."""

import json
import sys
from types import SimpleNamespace

import pytest

from pipeline.lineage import lineage, render
from pipeline.testing.project import run, stage_env


def a_version(**overrides):
    fields = {"name": "lenet5-mnist", "version": "3", "aliases": ["champion"], "run_id": "abc"}
    return SimpleNamespace(**{**fields, **overrides})


def a_run(tags=None, params=None, metrics=None, run_id="abc", run_name="bright-owl-1"):
    return SimpleNamespace(
        info=SimpleNamespace(run_id=run_id, run_name=run_name),
        data=SimpleNamespace(
            tags={
                "git.commit": "0123abcd",
                "git.dirty": "false",
                "dvc.exp_name": "lucky-lark",
                "data.train.md5": "aaa",
                "data.test.md5": "ccc",
                "mlflow.runName": run_name,
                "mlflow.user": "someone",
                **(tags or {}),
            },
            params=params
            if params is not None
            else {"train.epochs": "2", "model.activation": "relu", "train.batch_size": "128"},
            metrics=metrics
            if metrics is not None
            else {
                "test_accuracy": 0.98,
                "test_loss": 0.06,
                "best_val_accuracy": 0.985,
                "val_accuracy": 0.984,
                "val_loss": 0.05,
            },
        ),
    )


def test_the_facts_a_reviewer_needs():
    info = lineage(a_version(), a_run())
    assert info == {
        "model": "lenet5-mnist version 3",
        "aliases": ["champion"],
        "run_id": "abc",
        "run_name": "bright-owl-1",
        "git_commit": "0123abcd",
        "git_dirty": "false",
        "dvc_experiment": "lucky-lark",
        "data": {"train.md5": "aaa", "test.md5": "ccc"},
        "params": {"model.activation": "relu", "train.batch_size": "128", "train.epochs": "2"},
        "metrics": {"test_accuracy": 0.98, "test_loss": 0.06, "best_val_accuracy": 0.985},
    }
    assert list(info["params"]) == sorted(info["params"])


def test_it_is_json_serialisable():
    info = lineage(a_version(aliases=("champion", "prod")), a_run())
    assert json.loads(json.dumps(info)) == {**info, "aliases": ["champion", "prod"]}


def test_only_data_tags_and_only_their_prefix_removed():
    info = lineage(a_version(), a_run(tags={"database": "x", "mydata.val": "y"}))
    assert info["data"] == {"train.md5": "aaa", "test.md5": "ccc"}


def test_what_the_run_lacks_is_none_or_empty():
    bare = SimpleNamespace(
        info=SimpleNamespace(run_id="r", run_name=None),
        data=SimpleNamespace(tags={}, params={}, metrics={"val_accuracy": 0.5}),
    )
    info = lineage(a_version(aliases=[]), bare)
    assert info["aliases"] == []
    assert info["git_commit"] is None and info["git_dirty"] is None
    assert info["dvc_experiment"] is None  # trained outside `dvc exp run`
    assert info["data"] == {} and info["params"] == {} and info["metrics"] == {}


def test_render_indents_nested_dicts():
    text = render(lineage(a_version(), a_run()))
    lines = text.splitlines()
    assert text.endswith("\n")
    assert lines[0] == "model: lenet5-mnist version 3"
    assert "aliases: ['champion']" in lines
    assert "git_commit: 0123abcd" in lines and "git_dirty: false" in lines
    assert "dvc_experiment: lucky-lark" in lines
    data = lines.index("data:")
    assert lines[data + 1 : data + 3] == ["  train.md5: aaa", "  test.md5: ccc"]
    params = lines.index("params:")
    assert lines[params + 1 : params + 4] == [
        "  model.activation: relu",
        "  train.batch_size: 128",
        "  train.epochs: 2",
    ]
    metrics = lines.index("metrics:")
    assert lines[metrics + 1 :] == [
        "  test_accuracy: 0.98",
        "  test_loss: 0.06",
        "  best_val_accuracy: 0.985",
    ]
    top = [ln for ln in lines if not ln.startswith("  ")]
    assert [ln.split(":")[0] for ln in top] == list(lineage(a_version(), a_run()))


def test_render_of_an_empty_section_is_its_heading_only():
    assert render({"a": 1, "data": {}, "b": None}) == "a: 1\ndata:\nb: None\n"


@pytest.mark.slow
def test_lineage_json_names_the_champions_run(smoke_project):
    run_id = json.loads((smoke_project / "data/train/run.json").read_text())["run_id"]
    proc = run([sys.executable, "-m", "pipeline.lineage", "--json"], smoke_project, stage_env())
    info = json.loads(proc.stdout)
    assert info["run_id"] == run_id
    assert "champion" in info["aliases"]
    assert info["git_dirty"] == "false"
    assert info["git_commit"]
    assert {"train.md5", "test.md5"} <= set(info["data"]), info["data"]
    assert {"test_accuracy", "test_loss"} <= set(info["metrics"])
    assert info["params"]["train.max_samples"] == "2000"
