"""Stage ``evaluate``: score the trained model on the 10,000 test images.

Outputs (under data/eval/): metrics.json (DVC metrics: test_accuracy, test_loss, the
accuracy's 95 % Wilson interval test_accuracy_ci95_low/high, and ``robust``: the accuracy
on each seeded perturbation of the test images, pipeline/core/robustness.py), per_class.csv,
predictions.csv (actual, predicted; DVC's confusion template), confusion.png and
misclassified.png. Everything is also logged to the training's MLflow run, the robustness
accuracies as ``robust/<name>_accuracy`` and the per-class scores as ``per_class/...``,
with monitoring's reference: the model's profile on the validation images
(``monitoring/reference.npz``, read by ``python -m pipeline.monitor``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from pipeline.core import metrics, monitoring, plots, robustness, tracking
from pipeline.core.cli import run
from pipeline.core.data import atomic_write, file_md5, load_split, read_run, write_json
from pipeline.core.inference import NumpyModel, UnsupportedModel
from pipeline.core.layout import (
    CONFUSION_FILE,
    EVAL_METRICS_FILE,
    MISCLASSIFIED_FILE,
    MODEL_FILE,
    PER_CLASS_FILE,
    PREDICTIONS_FILE,
    split_file,
)
from pipeline.core.params import load_params
from pipeline.core.promotion import wilson

log = logging.getLogger(__name__)


def evaluate(probs: np.ndarray, y: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
    """({"test_accuracy", "test_loss"}, confusion matrix) from (N, 10) probabilities."""
    pred = probs.argmax(axis=1)
    scores = {"test_accuracy": accuracy(probs, y), "test_loss": metrics.cross_entropy(probs, y)}
    return scores, metrics.confusion(y, pred)


def misclassified(x: np.ndarray, y: np.ndarray, probs: np.ndarray, n: int) -> Figure:
    """Grid of the ``n`` most confident mistakes, titled 'true→predicted (p)'."""
    pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(pred != y)
    wrong = wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")][:n]
    titles = [f"{y[i]}→{pred[i]} ({probs[i, pred[i]]:.2f})" for i in wrong]
    return plots.digit_grid(x[wrong], titles, cols=min(12, max(1, len(wrong))))


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    """Correct / N as an exact float of the fraction (0.9826, not float32's 0.98259997)."""
    return int((probs.argmax(axis=1) == y).sum()) / len(y)


def accuracy_ci95(acc: float, n: int) -> tuple[float, float]:
    """The 95 % Wilson interval of an accuracy on ``n`` images, rounded outwards to 4
    decimals (the resolution of an accuracy on 10,000 images)."""
    low, high = wilson(round(acc * n), n)
    return math.floor(low * 1e4) / 1e4, math.ceil(high * 1e4) / 1e4


def robust_scores(probs_by_set: Mapping[str, np.ndarray], y: np.ndarray) -> dict[str, float]:
    """{"clean_accuracy": ..., "shift_2px_accuracy": ..., ...}: the accuracy on each copy
    (``clean``: the same images unperturbed, the baseline of the others)."""
    return {f"{name}_accuracy": accuracy(probs, y) for name, probs in probs_by_set.items()}


def metrics_record(scores: Mapping[str, float], robust: Mapping[str, float], n: int) -> dict:
    """metrics.json: test_accuracy, test_loss, test_accuracy_ci95_low/high, then ``robust``
    nested (DVC shows ``robust.shift_2px_accuracy``; it drops list values, so the interval
    is two keys)."""
    low, high = accuracy_ci95(scores["test_accuracy"], n)
    return {
        "test_accuracy": scores["test_accuracy"],
        "test_loss": scores["test_loss"],
        "test_accuracy_ci95_low": low,
        "test_accuracy_ci95_high": high,
        "robust": dict(robust),
    }


def mlflow_metrics(record: Mapping, table: pd.DataFrame) -> dict[str, float]:
    """metrics.json's values and the per-class scores as flat MLflow metric names: the UI
    groups charts by the prefix before '/' (``robust/``, ``per_class/``)."""
    flat = {k: float(v) for k, v in record.items() if k != "robust"}
    flat |= {f"robust/{k}": float(v) for k, v in record["robust"].items()}
    flat |= {
        f"per_class/{m}_{int(r.digit)}": float(getattr(r, m))
        for r in table.itertuples()
        for m in ("precision", "recall", "f1")
    }
    return flat


Predict = Callable[[np.ndarray], np.ndarray]  # N×28×28 uint8 -> (N, 10) probabilities
Embed = Callable[[np.ndarray], np.ndarray]  # N×28×28 uint8 -> (N, 84): F6, the penultimate


def predict_robustness(
    predict: Predict, x: np.ndarray, probs: np.ndarray, images: int | None, seed: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Probabilities on a seeded sample of ``images`` of the test images (None: all), clean
    (taken from ``probs``) and under each perturbation (robustness.perturbed_sets), and the
    sample's indices. One predict call scores every perturbed copy: faster than one each."""
    idx = robustness.sample(len(x), images, seed)
    sets = robustness.perturbed_sets(x[idx], seed)
    out = predict(np.concatenate(list(sets.values())))
    return {"clean": probs[idx], **dict(zip(sets, np.split(out, len(sets)), strict=True))}, idx


def load_model(path: Path = MODEL_FILE) -> Predict:
    """The trained model's predict: its forward pass in NumPy (pipeline/core/inference.py:
    no TensorFlow import, seconds sooner), or Keras for a layer that has none there
    (safe_mode refuses models that would run arbitrary code)."""
    return load_models(path)[0]


def load_models(path: Path = MODEL_FILE) -> tuple[Predict, Embed | None]:
    """:func:`load_model`'s predict, and the F6 embedding when the NumPy forward pass has
    the model (None for Keras'), from one read of the file."""
    try:
        model = NumpyModel.load(path)  # (a missing file: one DataError line)
        return model.predict, model.embed
    except UnsupportedModel as e:
        log.info("%s: %s has no NumPy forward pass, scored with Keras", path, e)
    from pipeline.core.backend import keras

    model = keras.saving.load_model(path, safe_mode=True)
    return (lambda x: model.predict(x, batch_size=1024, verbose=0)), None


def log_reference(predict: Predict, embed: Embed | None) -> None:
    """Monitoring's reference for this model (pipeline.monitor): its profile on the
    labelled validation images (features, predictions, F6 embedding when the NumPy
    forward pass has one, ATC's threshold), a run artifact ``monitoring/reference.npz``,
    so that monitoring needs neither TensorFlow nor a rescoring."""
    import tempfile

    x, y = load_split("val")
    ref = monitoring.reference(x, y, predict(x), embed(x) if embed else None)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "reference.npz"
        np.savez_compressed(out, **ref)
        tracking.log_artifact(out, "monitoring")


def main() -> None:
    params = load_params()
    tracking.connect(params.tracking.experiment)
    run_id = read_run()["run_id"]
    x, y = load_split("test")
    predict, embed = load_models()
    probs = predict(x)
    scores, cm = evaluate(probs, y)
    table = metrics.per_class(cm)
    cfg = params.evaluate
    start = time.perf_counter()
    by_set, idx = predict_robustness(predict, x, probs, cfg.robustness_images, cfg.robustness_seed)
    robust = robust_scores(by_set, y[idx])
    seconds = time.perf_counter() - start
    log.info("robustness: %d images, %d perturbations, %.1f s", len(idx), len(by_set) - 1, seconds)
    record = metrics_record(scores, robust, len(y))

    with tracking.active_run(run_id):
        source = split_file("test")
        test_set = tracking.log_dataset(
            x, y, name="mnist-test", source=source, digest=file_md5(source), context="test"
        )
        write_json(EVAL_METRICS_FILE, record)
        atomic_write(PER_CLASS_FILE, lambda t: table.to_csv(t, index=False))
        atomic_write(PREDICTIONS_FILE, lambda t: _predictions(y, probs).to_csv(t, index=False))
        plots.save(plots.confusion_matrix(cm), CONFUSION_FILE)
        plots.save(
            misclassified(x, y, probs, params.evaluate.misclassified_shown), MISCLASSIFIED_FILE
        )
        tracking.log_model_metrics(scores, dataset=test_set)  # the Models view ranks by them
        tracking.log_metrics(
            {k: v for k, v in mlflow_metrics(record, table).items() if k not in scores}
        )
        # The tables under evaluation/ (the model card reads them back from the run); the
        # plots at the root, beside learning_curves.png, where the compare view offers
        # them side by side.
        for path in (PER_CLASS_FILE, PREDICTIONS_FILE):
            tracking.log_artifact(path, "evaluation")
        for path in (CONFUSION_FILE, MISCLASSIFIED_FILE):
            tracking.log_artifact(path)
        log_reference(predict, embed)
    log.info(_summary(record))


def _summary(record: Mapping) -> str:
    robust = ", ".join(f"{k} {v:.4f}" for k, v in record["robust"].items())
    return (
        f"test_accuracy {record['test_accuracy']:.4f} "
        f"[{record['test_accuracy_ci95_low']:.4f}, {record['test_accuracy_ci95_high']:.4f}], "
        f"test_loss {record['test_loss']:.4f}; {robust}"
    )


def _predictions(y: np.ndarray, probs: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"actual": y, "predicted": probs.argmax(axis=1)})


if __name__ == "__main__":
    run(main)
