"""Watching a model at work, as pure math on arrays: per-image features, drift tests, and
accuracy estimated without labels (``python -m pipeline.monitor`` does the I/O).

- **Features** of each 28×28 uint8 image: mean ink, ink fraction, bounding box, centre of
  mass, stroke thickness; and the model's F6 embedding (84 values), from the NumPy
  forward pass.
- **Drift tests**, Evidently's defaults for samples of up to 1,000 rows (a window is 500
  images): a numeric column drifts when the two-sample Kolmogorov-Smirnov test gives
  p < 0.05; the predicted digit when the chi-square test of its counts against the
  reference's shares gives p < 0.05; the embedding when a domain classifier tells the
  current images from reference ones with a ROC AUC of 0.55 or more (Evidently's
  ``model()`` embeddings-drift method). Written here because Evidently 0.7 does not import
  beside pandas 3 (docs/monitoring.md). (Evidently's tests for more than 1,000 rows,
  Wasserstein distance / std >= 0.1, flagged mean ink in 18 % of clean 500-image windows:
  they measure a distance, not whether a sample of this size shows one.)
- **Accuracy without labels**: ATC (Garg et al., ICLR 2022), a confidence threshold fitted
  on the labelled validation images so that the share above it equals their accuracy;
  and average confidence. Bootstrap intervals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FEATURES = (
    "mean_ink", "ink_fraction", "bbox_height", "bbox_width", "centre_row", "centre_col",
    "thickness",
)  # fmt: skip
INK = 128  # a pixel is ink from this gray level up (MNIST: white ink on black)


def image_features(x: np.ndarray) -> dict[str, np.ndarray]:
    """(N, 28, 28) uint8 -> {feature: (N,) float64}."""
    f = x.astype(np.float64) / 255.0
    ink = x >= INK
    n, h, w = x.shape
    rows, cols = ink.any(axis=2), ink.any(axis=1)  # (N, 28) each

    def extent(mask: np.ndarray) -> np.ndarray:
        first = mask.argmax(axis=1)
        last = mask.shape[1] - 1 - mask[:, ::-1].argmax(axis=1)
        return np.where(mask.any(axis=1), last - first + 1, 0).astype(np.float64)

    mass = f.sum(axis=(1, 2))
    safe = np.where(mass > 0, mass, 1.0)
    centre_row = np.where(mass > 0, (f.sum(axis=2) * np.arange(h)).sum(axis=1) / safe, h / 2)
    centre_col = np.where(mass > 0, (f.sum(axis=1) * np.arange(w)).sum(axis=1) / safe, w / 2)
    # Stroke thickness ~ area / half the boundary: a stroke of width t and length L has area
    # t·L and about 2·L boundary pixels (ink pixels with a 4-neighbour that is not ink).
    padded = np.pad(ink, ((0, 0), (1, 1), (1, 1)))
    inner = (padded[:, :-2, 1:-1] & padded[:, 2:, 1:-1] & padded[:, 1:-1, :-2]
             & padded[:, 1:-1, 2:])  # fmt: skip
    boundary = (ink & ~inner).sum(axis=(1, 2))
    area = ink.sum(axis=(1, 2))
    thickness = np.where(boundary > 0, 2.0 * area / np.maximum(boundary, 1), 0.0)
    return {
        "mean_ink": f.mean(axis=(1, 2)),
        "ink_fraction": ink.mean(axis=(1, 2)),
        "bbox_height": extent(rows),
        "bbox_width": extent(cols),
        "centre_row": centre_row,
        "centre_col": centre_col,
        "thickness": thickness,
    }


@dataclass(frozen=True)
class ColumnDrift:
    test: str  # "ks_p_value", "chi2_p_value", "domain_classifier_auc"
    statistic: float
    threshold: float
    drift_below: bool  # p-values: drift when below the threshold; an AUC: at or above

    @property
    def drifted(self) -> bool:
        if self.drift_below:
            return self.statistic < self.threshold
        return self.statistic >= self.threshold

    def as_dict(self) -> dict[str, object]:
        return {"test": self.test, "statistic": float(f"{self.statistic:.6g}"),
                "threshold": self.threshold, "drifted": self.drifted}  # fmt: skip


def numeric_drift(reference: np.ndarray, current: np.ndarray, p_value: float) -> ColumnDrift:
    """Two-sample Kolmogorov-Smirnov test: drift when p < ``p_value``."""
    from scipy.stats import ks_2samp

    return ColumnDrift("ks_p_value", float(ks_2samp(reference, current).pvalue), p_value, True)


def digit_drift(reference: np.ndarray, current: np.ndarray, p_value: float) -> ColumnDrift:
    """Chi-square test of the current predicted digits' counts against the reference's
    shares (a digit the reference never predicted counts as 0.5 of one)."""
    from scipy.stats import chisquare

    observed = np.bincount(current, minlength=10).astype(np.float64)
    shares = np.maximum(np.bincount(reference, minlength=10), 0.5)
    expected = shares / shares.sum() * observed.sum()
    return ColumnDrift("chi2_p_value", float(chisquare(observed, expected).pvalue), p_value, True)


def embedding_drift(
    reference: np.ndarray, current: np.ndarray, threshold: float, seed: int = 0
) -> ColumnDrift:
    """ROC AUC of a logistic regression telling current embeddings from as many reference
    ones, on a held-out half (0.5: indistinguishable)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    n = min(len(current), len(reference))
    ref = reference[rng.choice(len(reference), n, replace=False)]
    cur = current[rng.choice(len(current), n, replace=False)]
    x = np.concatenate([ref, cur])
    y = np.r_[np.zeros(n), np.ones(n)]
    order = rng.permutation(2 * n)
    train, test = order[:n], order[n:]
    mean, std = x[train].mean(axis=0), x[train].std(axis=0) + 1e-6
    clf = LogisticRegression(C=0.1, max_iter=500)
    clf.fit((x[train] - mean) / std, y[train])
    if len(set(y[test])) < 2:
        return ColumnDrift("domain_classifier_auc", 0.5, threshold, False)
    auc = roc_auc_score(y[test], clf.predict_proba((x[test] - mean) / std)[:, 1])
    return ColumnDrift("domain_classifier_auc", float(auc), threshold, False)


def atc_threshold(confidence: np.ndarray, correct: np.ndarray) -> float:
    """ATC's threshold: the confidence above which the share of validation images equals
    their accuracy."""
    accuracy = float(np.mean(correct))
    return float(np.quantile(confidence, 1.0 - accuracy))


def atc_estimate(confidence: np.ndarray, threshold: float) -> float:
    return float(np.mean(confidence > threshold))


def bootstrap_ci(values: np.ndarray, statistic, n: int = 400, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of ``statistic(values)``."""
    rng = np.random.default_rng(seed)
    stats = [statistic(values[rng.integers(0, len(values), len(values))]) for _ in range(n)]
    low, high = np.percentile(stats, [2.5, 97.5])
    return float(low), float(high)


def windows(n: int, size: int | None) -> list[slice]:
    """Consecutive windows of ``size`` images over ``n`` (the last one may be shorter, and
    is kept only if it is at least half a window)."""
    if not size or size >= n:
        return [slice(0, n)]
    out = [slice(i, min(i + size, n)) for i in range(0, n, size)]
    if len(out) > 1 and out[-1].stop - out[-1].start < size / 2:
        out.pop()
    return out


REFERENCE_IMAGES = 48


def profile(
    x: np.ndarray, probs: np.ndarray, embedding: np.ndarray | None
) -> dict[str, np.ndarray]:
    """What monitoring compares, for images ``x`` scored ``probs``: the features, the
    predicted digit and its probability, and the F6 embedding when there is one."""
    out = {f"feature.{k}": v for k, v in image_features(x).items()}
    out["digit"] = probs.argmax(axis=1).astype(np.int64)
    out["confidence"] = probs.max(axis=1).astype(np.float64)
    if embedding is not None:
        out["embedding"] = embedding.astype(np.float32)
    return out


def reference(x: np.ndarray, y: np.ndarray, probs: np.ndarray, embedding: np.ndarray | None):
    """The reference of one model version: its :func:`profile` on labelled validation
    images, with ATC's threshold and the accuracy it was fitted to."""
    out = profile(x, probs, embedding)
    out["images"] = x[:REFERENCE_IMAGES]  # what the monitor's report shows beside a window
    correct = out["digit"] == y
    out["atc_threshold"] = np.array(atc_threshold(out["confidence"], correct))
    out["accuracy"] = np.array(float(correct.mean()))
    return out
