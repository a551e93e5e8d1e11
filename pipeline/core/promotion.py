"""The rules that decide which run is best and whether it may become the champion.

Pure functions on ``mlflow.search_runs``-style tables and metric dicts, used by
``register``, ``compare`` and the model card, so all three rank alike:

- a *candidate* is a full pipeline run: FINISHED, evaluated, with a logged model (sweep
  trials have neither, so they never compete);
- runs are ranked by ``register.metric`` of the final model (default ``val_accuracy``),
  then by the lower matching loss (``val_loss``), then newest first;
- the best candidate replaces the champion only on evidence (:func:`decide`): both models
  scored on the same images, an exact McNemar test on the images where they disagree.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections.abc import Mapping
from typing import Literal

import numpy as np
import pandas as pd

from pipeline.core.tags import FEEDBACK_MD5_TAG, MODEL_URI_TAG

MODEL_COLUMN = f"tags.{MODEL_URI_TAG}"
# FINISHED and evaluated (evaluate logs test_accuracy to the training's run).
CANDIDATE_FILTER = "attributes.status = 'FINISHED' and metrics.test_accuracy >= 0"
RANK_COLUMNS = (
    "metrics.val_accuracy",
    "metrics.val_loss",
    "metrics.test_accuracy",
    "metrics.test_loss",
)


def candidate_filter(feedback_md5: str | None) -> str:
    """Which runs compete: every candidate, or with labelled production images in the
    workspace, the candidates trained on that very feedback split."""
    if feedback_md5 is None:
        return CANDIDATE_FILTER
    return f"{CANDIDATE_FILTER} and tags.`{FEEDBACK_MD5_TAG}` = '{feedback_md5}'"


def loss_of(metric: str) -> str:
    """The tie-breaking loss of an accuracy metric: val_accuracy -> val_loss."""
    return metric.replace("accuracy", "loss")


def order(runs: pd.DataFrame, metric: str = "val_accuracy") -> pd.DataFrame:
    """Runs best first: ``metrics.<metric>`` desc, its loss asc, newest first; runs
    without the metric last."""
    keys = [f"metrics.{metric}", f"metrics.{loss_of(metric)}"]
    runs = runs.assign(**{k: runs[k] if k in runs else float("nan") for k in keys})
    by = [*keys, "start_time"] if "start_time" in runs else keys
    ascending = [False, True, False][: len(by)]
    return runs.sort_values(by, ascending=ascending, na_position="last", kind="stable")


def rank_runs(runs: pd.DataFrame, metric: str = "val_accuracy") -> pd.DataFrame:
    """Candidates (runs with a logged model) best first, as :func:`order` ranks them."""
    return order(runs[runs[MODEL_COLUMN].notna()], metric)


# --- The paired test: is the candidate better on the same images? --------------------------


@dataclasses.dataclass(frozen=True)
class Paired:
    """Two models scored on the same ``n`` images.

    ``champion_only``: images the champion gets right and the candidate wrong;
    ``candidate_only``: the reverse. Images both get right or both wrong say nothing about
    which is better, so the test looks at these discordant pairs only (McNemar).
    """

    n: int
    champion_only: int
    candidate_only: int
    both_right: int | None = None  # (gates recorded before slices did not count it)

    @property
    def gain(self) -> float:
        """Candidate minus champion accuracy, in points (percent)."""
        return 100.0 * (self.candidate_only - self.champion_only) / self.n

    @property
    def p_value(self) -> float:
        """Exact two-sided McNemar test: under "equally good", each discordant image is a
        fair coin flip, so ``candidate_only`` ~ Binomial(discordant, 1/2).

        The distribution is symmetric, so the two-sided p is twice the smaller tail
        (what ``scipy.stats.binomtest`` gives; ``scipy.special`` imports in 0.2 s where
        ``scipy.stats`` takes 1.5 s, paid by every evaluate and register)."""
        from scipy.special import bdtr

        discordant = self.champion_only + self.candidate_only
        if discordant == 0:
            return 1.0
        tail = min(self.candidate_only, self.champion_only)
        return min(1.0, 2.0 * float(bdtr(tail, discordant, 0.5)))

    def gain_interval(self, confidence: float = 0.95) -> tuple[float, float]:
        """Interval of the accuracy difference in points: the Wald interval for paired
        proportions, ``d ± z·sqrt(b + c − (c − b)²/n)/n``."""
        b, c, n = self.champion_only, self.candidate_only, self.n
        z = _z(confidence)
        half = z * math.sqrt(max(0.0, b + c - (c - b) ** 2 / n)) / n
        return (self.gain - 100 * half, self.gain + 100 * half)


def paired(y: np.ndarray, champion_pred: np.ndarray, candidate_pred: np.ndarray) -> Paired:
    """Count the discordant pairs of two models' predicted labels on the same images."""
    if not (len(y) == len(champion_pred) == len(candidate_pred)) or len(y) == 0:
        raise ValueError("both models must be scored on the same, non-empty set of images")
    a, b = champion_pred == y, candidate_pred == y
    return Paired(len(y), int((a & ~b).sum()), int((~a & b).sum()), int((a & b).sum()))


@dataclasses.dataclass(frozen=True)
class Decision:
    """What register does with the best candidate, and the one line that says why."""

    decision: Literal["first", "promoted", "kept", "same"]
    reason: str

    @property
    def promote(self) -> bool:
        return self.decision in ("first", "promoted")


def decide(result: Paired | None, alpha: float, min_gain: float) -> Decision:
    """Promote only on evidence: the candidate has more wins, the exact McNemar
    p < ``alpha`` and the gain is at least ``min_gain`` points. ``None``: no champion yet."""
    if result is None:
        return Decision("first", "no champion yet: promoted without a test")
    p, gain = result.p_value, result.gain
    facts = (
        f"{gain:+.2f} pts ({result.candidate_only} vs {result.champion_only} disagreements, "
        f"p = {p:.3g}"
    )
    if gain <= 0:
        return Decision("kept", f"{facts}): not better")
    if p >= alpha:
        return Decision("kept", f"{facts} >= {alpha:g})")
    if gain < min_gain:
        return Decision("kept", f"{facts}; gain < register.min_gain {min_gain:g})")
    return Decision("promoted", f"{facts} < {alpha:g})")


# --- The gate on every slice: MNIST's test split and the production slice -------------------


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One slice's outcome: ``better`` (significantly, by at least min_gain), ``worse``
    (the one-sided bound allows a loss over max_loss), ``even`` or ``small`` (too few
    images for the test: said, and not blocking)."""

    slice: str
    status: Literal["better", "worse", "even", "small"]
    line: str
    lower_pts: float | None  # the one-sided (1 - alpha) lower bound of the gain, in points


def lower_bound(result: Paired, alpha: float) -> float:
    """One-sided (1 − alpha) lower bound of the candidate's gain in points (paired Wald):
    non-inferiority holds when it is above ``-max_loss``."""
    b, c, n = result.champion_only, result.candidate_only, result.n
    se = math.sqrt(max(0.0, b + c - (c - b) ** 2 / n)) / n
    z = statistics.NormalDist().inv_cdf(1 - max(alpha, 1e-15))  # (alpha 1e-300: no gate passes)
    return result.gain - 100 * z * se


def judge(
    name: str, result: Paired, alpha: float, min_gain: float, max_loss: float, min_images: int
) -> Verdict:
    """The verdict of one slice."""
    if result.n < min_images:
        return Verdict(name, "small", f"{name}: {result.n} images, too few for the test "
                       f"(register.min_slice_images {min_images}): not blocking", None)  # fmt: skip
    low, p = lower_bound(result, alpha), result.p_value
    facts = (f"{name}: {result.gain:+.2f} pts, bound {low:+.2f}, p = {p:.3g}, "
             f"{result.n} images")  # fmt: skip
    if low < -max_loss:
        return Verdict(name, "worse", f"{facts}: may be worse by more than its margin, "
                       f"{max_loss:g} pts", low)  # fmt: skip
    if result.gain > 0 and p < alpha and result.gain >= min_gain:
        return Verdict(name, "better", f"{facts}: better", low)
    return Verdict(name, "even", f"{facts}: not significantly better", low)


def decide_slices(
    results: Mapping[str, Paired], alpha: float, min_gain: float,
    max_loss: float | Mapping[str, float], min_images: int,
) -> tuple[Decision, dict[str, Verdict]]:  # fmt: skip
    """Promote when the candidate is significantly better on at least one slice and no
    worse than its margin, ``max_loss`` points (one per slice, or one for all), on any:
    a one-sided bound, not a point estimate. With the test split alone this is
    :func:`decide`, whose one-line reason it keeps."""
    margin = max_loss if isinstance(max_loss, Mapping) else dict.fromkeys(results, max_loss)
    verdicts = {k: judge(k, r, alpha, min_gain, margin[k], min_images) for k, r in results.items()}
    if set(results) == {"test"}:
        return decide(results["test"], alpha, min_gain), verdicts
    lines = "; ".join(v.line for v in verdicts.values())
    if any(v.status == "worse" for v in verdicts.values()):
        return Decision("kept", f"worse on a slice: {lines}"), verdicts
    if any(v.status == "better" for v in verdicts.values()):
        return Decision("promoted", lines), verdicts
    return Decision("kept", f"better on no slice: {lines}"), verdicts


def slice_record(result: Paired, verdict: Verdict) -> dict[str, object]:
    """One slice in the gate record (champion.json, the card, the version's tags)."""
    low, high = result.gain_interval()
    record: dict[str, object] = {
        "count": result.n,
        "status": verdict.status,
        "p_value": float(f"{result.p_value:.6g}"),
        "accuracy_diff_pts": round(result.gain, 4),
        "accuracy_diff_ci95_pts": [round(low, 4), round(high, 4)],
        "lower_bound_pts": None if verdict.lower_pts is None else round(verdict.lower_pts, 4),
    }
    if result.both_right is not None:
        record["champion_accuracy"] = round(
            (result.both_right + result.champion_only) / result.n, 6
        )
        record["candidate_accuracy"] = round(
            (result.both_right + result.candidate_only) / result.n, 6
        )
    return record


def _z(confidence: float) -> float:
    """The two-sided normal quantile: 1.96 for 0.95."""
    return statistics.NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (sound near 0 and 1, unlike the Wald one)."""
    if n == 0:
        return (0.0, 1.0)
    z = _z(confidence)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


GATE_TAG_PREFIX = "gate."


def gate_record(
    result: Paired | None,
    split: str,
    n: int,
    alpha: float,
    min_gain: float,
    against: str | None = None,
    md5: str | None = None,
) -> dict[str, object]:
    """The gate's facts as champion.json's ``gate`` holds them (``decision`` and ``reason``
    are added by the caller). ``discordant``: [champion right & candidate wrong, candidate
    right & champion wrong]; the accuracy difference is the candidate's minus the
    champion's, in points, with its 95 % interval. ``md5``: the scored split's content
    hash, which says whether the counts still hold (:func:`reusable`)."""
    images: dict[str, object] = {"split": split, "count": n}
    if md5 is not None:
        images["md5"] = md5
    record: dict[str, object] = {
        "against": against,
        "images": images,
        "alpha": alpha,
        "min_gain": min_gain,
    }
    if result is not None:
        low, high = result.gain_interval()
        record |= {
            "p_value": float(f"{result.p_value:.6g}"),  # 3.1e-136 stays, not 0.0
            "discordant": [result.champion_only, result.candidate_only],
            **({"both_right": result.both_right} if result.both_right is not None else {}),
            "accuracy_diff_pts": round(result.gain, 4),
            "accuracy_diff_ci95_pts": [round(low, 4), round(high, 4)],
        }
    return record


def reusable(record: Mapping[str, object], against: str, md5: str) -> Paired | None:
    """The paired counts of an earlier gate of the same candidate (the version that stores
    the record), while they still hold: the same champion scored on the same images
    (split content hash). Only the counts are reused: the decision is made again under
    today's ``register.alpha`` and ``register.min_gain`` (:func:`decide`)."""
    images = record.get("images")
    discordant = record.get("discordant")
    if (
        record.get("against") != against
        or not isinstance(images, Mapping)
        or images.get("md5") != md5
        or not isinstance(discordant, list)
    ):
        return None
    champion_only, candidate_only = (int(v) for v in discordant)
    both = record.get("both_right")
    both_right = int(both) if isinstance(both, int) else None
    return Paired(int(images["count"]), champion_only, candidate_only, both_right)


def gate_tags(record: Mapping[str, object]) -> dict[str, str]:
    """The gate record as model-version tags (the registry page shows them), plus the
    whole record as JSON, for register to read back."""
    tags = {f"{GATE_TAG_PREFIX}record": json.dumps(record, sort_keys=True)}
    for key in ("decision", "against", "p_value", "discordant", "accuracy_diff_pts",
                "accuracy_diff_ci95_pts", "alpha"):  # fmt: skip
        if record.get(key) is not None:
            value = record[key]
            tags[f"{GATE_TAG_PREFIX}{key}"] = (
                ", ".join(map(str, value)) if isinstance(value, list) else str(value)
            )
    images = record.get("images")
    if isinstance(images, Mapping):
        tags[f"{GATE_TAG_PREFIX}images"] = f"{images['split']} ({images['count']})"
    slices = record.get("slices")
    for name, facts in slices.items() if isinstance(slices, Mapping) else ():
        low, high = facts["accuracy_diff_ci95_pts"]
        tags[f"{GATE_TAG_PREFIX}slice.{name}"] = (
            f"{facts['status']}: {facts['accuracy_diff_pts']:+.2f} pts [{low:+.2f}, {high:+.2f}]"
            f", p = {facts['p_value']:.3g}, {facts['count']} images"
        )
    return tags
