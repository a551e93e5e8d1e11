"""Pure evaluation math on labels and predicted probabilities (NumPy in, NumPy/pandas out)."""

from __future__ import annotations

import numpy as np
import pandas as pd

_EPS = 1e-7  # Keras clips probabilities the same way in categorical cross-entropy


def float32_value(value: float) -> float:
    """A float32 figure (what Keras reports) to the six significant digits it is good for:
    0.8906, not 0.89059997 or 0.8905999660491943. (float32 carries about seven, and a
    mean over batches in float32 spends the last one on rounding error.)"""
    return float(f"{float(np.float32(value)):.6g}")


def cross_entropy(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean categorical cross-entropy of (N, 10) probabilities against integer labels."""
    p = np.clip(probs[np.arange(len(y)), y], _EPS, 1 - _EPS)
    return float(-np.log(p).mean())


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int = 10) -> np.ndarray:
    """Counts, rows = true class, columns = predicted class."""
    return np.bincount(y_true.astype(int) * n_classes + y_pred, minlength=n_classes**2).reshape(
        n_classes, n_classes
    )


def per_class(cm: np.ndarray) -> pd.DataFrame:
    """Precision, recall, F1 and support per class from a confusion matrix."""
    tp = np.diag(cm).astype(float)
    predicted, support = cm.sum(axis=0), cm.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return pd.DataFrame(
        {
            "digit": np.arange(len(cm)),
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": support,
        }
    )
