"""One window of the log against the version's reference: drift by column, whether the
window drifted (``monitor.drift_share`` of the columns), and the accuracy estimates; the
``drift`` and ``accuracy`` objects of report.json."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from pipeline.core.monitoring import (
    ColumnDrift,
    atc_estimate,
    bootstrap_ci,
    digit_drift,
    embedding_drift,
    numeric_drift,
)
from pipeline.core.params import MonitorParams


def assess(
    ref: Mapping[str, np.ndarray], cur: Mapping[str, np.ndarray], cfg: MonitorParams,
    labels: np.ndarray | None = None, intervals: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Drift of the current window against the reference and the accuracy estimates: the
    ``drift`` and ``accuracy`` objects of report.json. ``labels``: true digits, -1 where
    none came back."""
    columns: dict[str, ColumnDrift] = {}
    for key in ref:
        if key.startswith("feature.") and key in cur:
            columns[key.removeprefix("feature.")] = numeric_drift(ref[key], cur[key], cfg.p_value)
    columns["confidence"] = numeric_drift(ref["confidence"], cur["confidence"], cfg.p_value)
    columns["predicted_digit"] = digit_drift(ref["digit"], cur["digit"], cfg.p_value)
    if "embedding" in ref and "embedding" in cur:
        columns["embedding_f6"] = embedding_drift(ref["embedding"], cur["embedding"],
                                                  cfg.embedding_auc)  # fmt: skip
    share = sum(c.drifted for c in columns.values()) / len(columns)
    threshold = float(ref["atc_threshold"])
    confidence = cur["confidence"]
    accuracy: dict[str, Any] = {
        "method": "ATC (max confidence, threshold fitted on validation)",
        "estimated": atc_estimate(confidence, threshold),
        "estimated_ci95": None,
        "average_confidence": float(confidence.mean()),
        "reference": float(ref["accuracy"]),
        "labeled": None,
        "labeled_images": 0,
    }
    domain = columns.get("embedding_f6")
    accuracy["trusted"] = domain is None or domain.statistic < cfg.untrusted_auc
    if not accuracy["trusted"]:  # ATC extrapolates from validation: far from it, it guesses
        accuracy["untrusted"] = (
            f"the window is far outside the reference (the F6 embedding's domain classifier "
            f"AUC {domain.statistic:.2f} >= monitor.untrusted_auc {cfg.untrusted_auc:g}), where a "
            "label-free estimate cannot be trusted (ATC read 74.9 % on Fashion-MNIST, which "
            "holds no digits). Label a sample to measure it."
        )
    if intervals:
        accuracy["estimated_ci95"] = list(bootstrap_ci(
            confidence, lambda c: atc_estimate(c, threshold), cfg.bootstrap))  # fmt: skip
    if labels is not None and (labels >= 0).any():
        known = labels >= 0
        accuracy["labeled"] = float((cur["digit"][known] == labels[known]).mean())
        accuracy["labeled_images"] = int(known.sum())
    return {
        "drift": {
            "detected": share >= cfg.drift_share,
            "share": share,
            "threshold_share": cfg.drift_share,
            "features": {k: c.as_dict() for k, c in columns.items()},
        },
        "accuracy": accuracy,
    }
