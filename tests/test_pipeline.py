"""`dvc repro` end to end in a throwaway copy of the project (a slice of MNIST, 2 epochs)."""

import json

import numpy as np
import pytest
import yaml

from pipeline.core.data import file_md5
from pipeline.testing.project import clone_of, run, set_params, stage_env
from tests.stores import mlflow_client

pytestmark = pytest.mark.slow


def test_preprocess_outputs_all_of_mnist_as_uint8(smoke_project):
    counts = {}
    for split in ("train", "val", "test"):
        with np.load(smoke_project / f"data/prepared/{split}.npz", allow_pickle=False) as z:
            x, y = z["x"], z["y"]
        assert x.dtype == np.uint8 and x.shape[1:] == (28, 28)
        assert y.dtype.kind in "iu" and set(np.unique(y)) == set(range(10))
        counts[split] = len(x)
    assert counts == {"train": 55_000, "val": 5_000, "test": 10_000}
    summary = json.loads((smoke_project / "data/prepared/summary.json").read_text())
    assert summary["val"]["count"] == 5000
    assert sum(summary["test"]["per_class"].values()) == 10_000


def test_second_repro_reruns_nothing(smoke_project):
    out = run(["dvc", "repro"], smoke_project).stdout
    assert "Data and pipelines are up to date." in out
    assert "Running stage" not in out


def test_an_edit_reruns_only_the_stages_that_use_it(smoke_project, tmp_path):
    project = clone_of(smoke_project, tmp_path)
    set_params(project, evaluate__misclassified_shown=12)
    status = run(["dvc", "status", "--json"], project).stdout
    assert set(json.loads(status)) == {"evaluate"}
    set_params(project, train__learning_rate=0.02)
    assert set(json.loads(run(["dvc", "status", "--json"], project).stdout)) == {
        "train",
        "evaluate",
    }


def test_dvc_metrics_and_plots(smoke_project, tmp_path):
    metrics = json.loads(run(["dvc", "metrics", "show", "--json"], smoke_project).stdout)
    files = metrics[""]["data"]
    assert set(files) == {"data/eval/metrics.json", "data/train/metrics.json",
                          "data/feedback/summary.json"}  # fmt: skip
    feedback = files["data/feedback/summary.json"]["data"]
    assert feedback["images"] == 0 and feedback["labels"] == 0  # no service, no labels
    scores = files["data/eval/metrics.json"]["data"]
    assert 0 < scores["test_accuracy"] <= 1 and scores["test_loss"] > 0
    train = files["data/train/metrics.json"]["data"]
    assert set(train) == {"val_accuracy", "val_loss", "train_seconds"}
    run(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], smoke_project)
    html = (tmp_path / "plots/index.html").read_text()
    for name in ("Loss", "Accuracy", "Confusion matrix", "confusion.png", "samples.png"):
        assert name in html
    history = (smoke_project / "data/train/history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,accuracy,loss,") or "val_accuracy" in history[0]
    assert len(history) == 1 + 2


def test_mlflow_run_has_params_curves_metrics_and_artifacts(smoke_project):
    client = mlflow_client(smoke_project)
    run_id = json.loads((smoke_project / "data/train/run.json").read_text())["run_id"]
    r = client.get_run(run_id)
    assert r.info.status == "FINISHED"
    assert client.get_experiment(r.info.experiment_id).name == "lenet5-mnist"
    params = yaml.safe_load((smoke_project / "params.yaml").read_text())
    expected = {f"{s}.{k}" for s, keys in params.items() for k in keys}
    assert set(r.data.params) == expected
    assert r.data.params["train.max_samples"] == "2000"
    for metric in ("loss", "accuracy", "val_loss", "val_accuracy"):  # the learning curves
        steps = [m.step for m in client.get_metric_history(run_id, f"curves/{metric}")]
        assert steps == [1, 2], metric
    eval_metrics = json.loads((smoke_project / "data/eval/metrics.json").read_text())
    assert r.data.metrics["test_accuracy"] == pytest.approx(eval_metrics["test_accuracy"])
    assert {"per_class/precision_0", "per_class/recall_9", "per_class/f1_5"} <= set(r.data.metrics)
    tags = r.data.tags
    # `dvc repro` of a clean commit (DVC deletes the stage's git-tracked outputs first).
    assert len(tags["git.commit"]) == 40 and tags["git.dirty"] == "false"
    for split in ("train", "val", "test"):
        assert tags[f"data.{split}.md5"] == file_md5(smoke_project / f"data/prepared/{split}.npz")
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    artifacts |= {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert {
        "learning_curves.png",  # the plots side by side at the root (the compare view)
        "confusion.png",
        "misclassified.png",
        "model_summary.txt",
        "evaluation/per_class.csv",  # the tables the model card reads back
        "evaluation/predictions.csv",
    } <= artifacts
    assert (smoke_project / "mlartifacts").is_dir()


def test_mlflow_sees_datasets_logged_model_and_experiment_kind(smoke_project):
    import mlflow

    client = mlflow_client(smoke_project)
    run_id = json.loads((smoke_project / "data/train/run.json").read_text())["run_id"]
    r = client.get_run(run_id)
    lock = yaml.safe_load((smoke_project / "dvc.lock").read_text())
    dvc_md5 = {o["path"]: o["md5"] for o in lock["stages"]["preprocess"]["outs"] if "md5" in o}
    inputs = {d.dataset.name: d for d in r.inputs.dataset_inputs}
    assert set(inputs) == {"mnist-train", "mnist-val", "mnist-test"}
    for split, context in (("train", "training"), ("val", "validation"), ("test", "test")):
        d = inputs[f"mnist-{split}"]
        path = f"data/prepared/{split}.npz"
        assert d.dataset.digest == dvc_md5[path]  # the same bytes dvc.lock names
        assert json.loads(d.dataset.source) == {"uri": path}
        assert {t.key: t.value for t in d.tags}["mlflow.data.context"] == context
    train_shape = json.loads(inputs["mnist-train"].dataset.profile)["features_shape"]
    assert train_shape == [2000, 28, 28]  # what was trained on: train.max_samples

    exp = client.get_experiment(r.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    mlflow.set_tracking_uri(f"sqlite:///{smoke_project / 'mlflow.db'}")
    models = mlflow.search_logged_models(
        experiment_ids=[exp.experiment_id],
        filter_string=f"source_run_id = '{run_id}'",
        output_format="list",
    )
    assert len(models) == 1
    linked = {m.key: m for m in models[0].metrics}
    assert linked["test_accuracy"].value == r.data.metrics["test_accuracy"]
    assert linked["test_accuracy"].dataset_name == "mnist-test"
    assert r.data.tags["model.uri"] == f"models:/{models[0].model_id}"


def test_small_text_outputs_are_for_git_and_binaries_for_dvc(smoke_project):
    tracked_by_git = [
        "data/prepared/summary.json",
        "data/train/metrics.json",
        "data/train/history.csv",
        "data/train/run.json",
        "data/eval/metrics.json",
        "data/eval/per_class.csv",
        "data/eval/predictions.csv",
        "data/register/champion.json",
    ]
    cached = [
        "data/raw",
        "data/prepared/train.npz",
        "data/prepared/samples.png",
        "data/train/model.keras",
        "data/train/learning_curves.png",
        "data/eval/confusion.png",
    ]
    for path in tracked_by_git + cached:
        assert (smoke_project / path).exists(), path
    ignored = run(
        ["git", "check-ignore", *tracked_by_git, *cached], smoke_project, check=False
    ).stdout.split()
    assert sorted(ignored) == sorted(cached)
    seen = run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], smoke_project)
    assert set(tracked_by_git) <= set(seen.stdout.split())  # committed, or offered to commit
    assert not list((smoke_project / "data").rglob(".*"))  # no temp files left behind


def test_logged_model_loads_with_pyfunc_and_matches_keras(smoke_project):
    import keras
    import mlflow

    run_id = json.loads((smoke_project / "data/train/run.json").read_text())["run_id"]
    mlflow.set_tracking_uri(f"sqlite:///{smoke_project / 'mlflow.db'}")
    uri = f"runs:/{run_id}/model"
    info = mlflow.models.get_model_info(uri)
    assert info.signature is not None and info.saved_input_example_info is not None
    with np.load(smoke_project / "data/prepared/test.npz", allow_pickle=False) as z:
        x = z["x"][:16]
    probs = mlflow.pyfunc.load_model(uri).predict(x)
    assert probs.shape == (16, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    local = keras.saving.load_model(smoke_project / "data/train/model.keras", safe_mode=True)
    np.testing.assert_allclose(probs, local.predict(x, verbose=0), atol=1e-6)


def test_corrupt_mirror_fails_repro_with_one_line(smoke_project, mnist_dir, tmp_path):
    project = clone_of(smoke_project, tmp_path / "project")
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for f in mnist_dir.glob("*.gz"):
        (mirror / f.name).write_bytes(f.read_bytes())
    data = bytearray((mirror / "t10k-labels-idx1-ubyte.gz").read_bytes())
    data[100] ^= 0xFF
    (mirror / "t10k-labels-idx1-ubyte.gz").write_bytes(bytes(data))
    proc = run(
        ["dvc", "repro", "--force", "download"],
        project,
        stage_env(MNIST_MIRROR=str(mirror)),
        check=False,
    )
    assert proc.returncode != 0
    errors = [ln for ln in proc.stderr.splitlines() if " ERROR " in ln]
    assert len(errors) == 1, proc.stderr
    assert "t10k-labels-idx1-ubyte.gz" in errors[0]
    assert not (project / "data/raw/t10k-labels-idx1-ubyte.gz").exists()
    assert not list((project / "data/raw").glob(".*"))
