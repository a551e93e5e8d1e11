"""Stage ``evaluate``: score the trained model on the 10,000 test images.

Outputs (under data/eval/): metrics.json (test_accuracy, test_loss; DVC metrics),
per_class.csv, predictions.csv (actual, predicted; DVC's confusion template),
confusion.png and misclassified.png. Everything is also logged to the training's MLflow run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from pipeline.core import metrics, plots, tracking
from pipeline.core.cli import run
from pipeline.core.data import atomic_write, file_md5, load_split, write_json
from pipeline.core.errors import DataError
from pipeline.core.layout import (
    CONFUSION_FILE,
    EVAL_METRICS_FILE,
    MISCLASSIFIED_FILE,
    MODEL_FILE,
    PER_CLASS_FILE,
    PREDICTIONS_FILE,
    PREPARED_DIR,
    RUN_FILE,
)
from pipeline.core.params import load_params

log = logging.getLogger(__name__)

TEST_FILE = PREPARED_DIR / "test.npz"


def evaluate(probs: np.ndarray, y: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
    """({"test_accuracy", "test_loss"}, confusion matrix) from (N, 10) probabilities."""
    pred = probs.argmax(axis=1)
    scores = {
        "test_accuracy": float((pred == y).mean()),
        "test_loss": metrics.cross_entropy(probs, y),
    }
    return scores, metrics.confusion(y, pred)


def misclassified(x: np.ndarray, y: np.ndarray, probs: np.ndarray, n: int) -> Figure:
    """Grid of the ``n`` most confident mistakes, titled 'true→predicted (p)'."""
    pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(pred != y)
    wrong = wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")][:n]
    titles = [f"{y[i]}→{pred[i]} ({probs[i, pred[i]]:.2f})" for i in wrong]
    return plots.digit_grid(x[wrong], titles, cols=min(12, max(1, len(wrong))))


def load_model(path: Path = MODEL_FILE) -> keras.Model:
    """Load the trained model; safe_mode refuses models that would run arbitrary code."""
    if not path.exists():
        raise DataError(f"{path}: missing (run the train stage)")
    return keras.saving.load_model(path, safe_mode=True)


def main() -> None:
    params = load_params()
    tracking.connect(params.tracking.experiment)
    run_id = _read_run_id()
    x, y = load_split("test")
    model = load_model()
    probs = model.predict(x, batch_size=1024, verbose=0)
    scores, cm = evaluate(probs, y)
    table = metrics.per_class(cm)

    with tracking.active_run(run_id):
        test_set = tracking.log_dataset(
            x, y, name="mnist-test", source=TEST_FILE, digest=file_md5(TEST_FILE), context="test"
        )
        write_json(EVAL_METRICS_FILE, scores)
        atomic_write(PER_CLASS_FILE, lambda t: table.to_csv(t, index=False))
        atomic_write(PREDICTIONS_FILE, lambda t: _predictions(y, probs).to_csv(t, index=False))
        plots.save(plots.confusion_matrix(cm), CONFUSION_FILE)
        plots.save(
            misclassified(x, y, probs, params.evaluate.misclassified_shown), MISCLASSIFIED_FILE
        )
        tracking.log_model_metrics(scores, dataset=test_set)  # the Models view ranks by them
        tracking.log_metrics(
            {
                f"{m}_{int(r.digit)}": getattr(r, m)
                for r in table.itertuples()
                for m in ("precision", "recall", "f1")
            }
        )
        for path in (PER_CLASS_FILE, CONFUSION_FILE, MISCLASSIFIED_FILE):
            tracking.log_artifact(path, "evaluation")
    log.info("test_accuracy %.4f, test_loss %.4f", scores["test_accuracy"], scores["test_loss"])


def _predictions(y: np.ndarray, probs: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"actual": y, "predicted": probs.argmax(axis=1)})


def _read_run_id() -> str:
    try:
        return json.loads(RUN_FILE.read_text())["run_id"]
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{RUN_FILE}: no MLflow run id ({e}); run the train stage") from None


if __name__ == "__main__":
    run(main)
