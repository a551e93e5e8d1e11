"""Monitoring's math on made-up images and scores: features, drift tests, ATC."""

import numpy as np
import pytest

from pipeline.core import monitoring as mo


def bar(width: int, height: int = 20, top: int = 4, left: int = 10) -> np.ndarray:
    x = np.zeros((28, 28), np.uint8)
    x[top : top + height, left : left + width] = 255
    return x


def test_features_of_a_bar():
    f = mo.image_features(np.stack([bar(3), bar(6), np.zeros((28, 28), np.uint8)]))
    assert f["bbox_height"].tolist() == [20, 20, 0] and f["bbox_width"].tolist() == [3, 6, 0]
    assert f["ink_fraction"][0] == pytest.approx(60 / 784)
    assert f["centre_row"][0] == pytest.approx(13.5) and f["centre_col"][1] == pytest.approx(12.5)
    assert f["thickness"][1] > f["thickness"][0] > 2  # a thicker stroke measures thicker
    assert f["centre_row"][2] == 14 and f["thickness"][2] == 0  # blank: no NaN


def test_drift_tests_flag_a_shift_and_not_a_resample():
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, 5000)
    assert not mo.numeric_drift(ref, rng.normal(0, 1, 500), 0.05).drifted
    assert mo.numeric_drift(ref, rng.normal(0.5, 1, 500), 0.05).drifted
    digits = rng.integers(0, 10, 5000)
    same = np.random.default_rng(7).integers(0, 10, 500)
    assert not mo.digit_drift(digits, same, 0.05).drifted
    assert mo.digit_drift(digits, np.full(500, 3), 0.05).drifted
    emb = rng.normal(0, 1, (5000, 84))
    same = mo.embedding_drift(emb, rng.normal(0, 1, (500, 84)), 0.55)
    moved = mo.embedding_drift(emb, rng.normal(0.3, 1, (500, 84)), 0.55)
    assert not same.drifted and moved.drifted and moved.as_dict()["test"].endswith("auc")


def test_atc_recovers_the_accuracy_of_a_calibrated_model():
    rng = np.random.default_rng(1)

    def scored(n, accuracy):  # calibrated: P(correct | confidence c) = c
        c = np.clip(rng.normal(accuracy, 0.1, n), 0.1, 1.0)
        return c, rng.random(n) < c

    conf, correct = scored(5000, 0.9)
    t = mo.atc_threshold(conf, correct)
    assert mo.atc_estimate(conf, t) == pytest.approx(correct.mean(), abs=1e-3)
    again, truth = scored(2000, 0.9)  # new images like the validation ones
    assert mo.atc_estimate(again, t) == pytest.approx(truth.mean(), abs=0.03)
    shifted, _ = scored(2000, 0.75)  # less confident: a lower estimate
    assert mo.atc_estimate(shifted, t) < mo.atc_estimate(again, t) - 0.1
    low, high = mo.bootstrap_ci(again, lambda c: mo.atc_estimate(c, t), 200)
    assert low < mo.atc_estimate(again, t) < high and high - low < 0.06
