"""The evaluate stage's pure helpers: scores, the interval, robustness and what is logged."""

import json

import numpy as np
import pytest

from pipeline import evaluate as ev
from pipeline.core import metrics, robustness
from pipeline.core.errors import DataError
from pipeline.core.promotion import wilson


def _probs(pred: np.ndarray, confidence: float = 0.9) -> np.ndarray:
    """(N, 10) probabilities that predict ``pred`` with ``confidence``."""
    p = np.full((len(pred), 10), (1 - confidence) / 9, np.float32)
    p[np.arange(len(pred)), pred] = confidence
    return p


def _n_correct(n: int, correct: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities with exactly ``correct`` of ``n`` right."""
    y = np.random.default_rng(seed).integers(0, 10, size=n)
    pred = y.copy()
    pred[correct:] = (y[correct:] + 1) % 10
    return _probs(pred), y


def test_evaluate_scores_and_confusion():
    probs, y = _n_correct(7, 3)
    scores, cm = ev.evaluate(probs, y)
    assert scores["test_accuracy"] == 3 / 7
    assert scores["test_loss"] == pytest.approx(metrics.cross_entropy(probs, y))
    assert cm.sum() == 7 and np.trace(cm) == 3


def test_accuracy_is_the_exact_fraction():
    probs, y = _n_correct(10_000, 9826)
    assert ev.accuracy(probs, y) == 0.9826  # not float32's 0.98259997
    assert json.dumps(ev.accuracy(probs, y)) == "0.9826"


def test_ci95_is_wilson_rounded_outwards_to_4_decimals():
    low, high = ev.accuracy_ci95(0.9826, 10_000)
    w_low, w_high = wilson(9826, 10_000)
    assert low <= w_low < 0.9826 < w_high <= high
    assert high - w_high < 1e-4 and w_low - low < 1e-4
    assert (low, high) == (round(low, 4), round(high, 4))
    assert (low, high) == (0.9798, 0.985)  # Wilson: 0.97985, 0.98498
    assert ev.accuracy_ci95(1.0, 100)[1] == 1.0


def test_robust_scores_names_each_set():
    probs, y = _n_correct(10, 4)
    out = ev.robust_scores({"clean": _probs(y), "noise": probs}, y)
    assert out == {"clean_accuracy": 1.0, "noise_accuracy": 0.4}


def _record() -> dict:
    robust = {"clean_accuracy": 0.985, **{f"{n}_accuracy": 0.5 for n in robustness.PERTURBATIONS}}
    return ev.metrics_record({"test_accuracy": 0.9826, "test_loss": 0.0537}, robust, 10_000)


def test_metrics_record_keys_for_dvc():
    record = _record()
    assert list(record) == [
        "test_accuracy",
        "test_loss",
        "test_accuracy_ci95_low",
        "test_accuracy_ci95_high",
        "robust",
    ]  # test_accuracy and test_loss first: `dvc exp show` keeps the file's order
    assert list(record["robust"]) == [
        "clean_accuracy",
        "shift_2px_accuracy",
        "rotate_15deg_accuracy",
        "noise_accuracy",
        "inverted_accuracy",
        "thick_accuracy",
        "thin_accuracy",
    ]
    assert (record["test_accuracy_ci95_low"], record["test_accuracy_ci95_high"]) == (
        0.9798,
        0.985,
    )
    leaves = [v for k, v in record.items() if k != "robust"] + list(record["robust"].values())
    assert all(type(v) is float for v in leaves)  # no lists (DVC drops them), no numpy types
    assert json.loads(json.dumps(record)) == record


def test_mlflow_metrics_are_flat_with_chart_sections():
    cm = metrics.confusion(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]))
    flat = ev.mlflow_metrics(_record(), metrics.per_class(cm))
    assert {
        "test_accuracy",
        "test_loss",
        "test_accuracy_ci95_low",
        "test_accuracy_ci95_high",
        "robust/clean_accuracy",
        "robust/shift_2px_accuracy",
        "robust/thin_accuracy",
        "per_class/precision_0",
        "per_class/recall_9",
        "per_class/f1_2",
    } <= set(flat)
    assert not {"robust", "precision_0", "shift_2px_accuracy"} & set(flat)
    assert len([k for k in flat if k.startswith("per_class/")]) == 3 * 10
    assert flat["per_class/recall_1"] == 0.5
    assert all(type(v) is float for v in flat.values())


def test_misclassified_shows_the_most_confident_mistakes_first():
    y = np.array([0, 1, 2, 3])
    probs = _probs(np.array([0, 2, 3, 3]))
    probs[1] = _probs(np.array([2]), 0.6)[0]
    fig = ev.misclassified(np.zeros((4, 28, 28), np.uint8), y, probs, n=5)
    titles = [t.get_text() for t in fig.axes[0].texts]
    assert titles == ["2→3 (0.90)", "1→2 (0.60)"]


class _FakeModel:
    """model(x) -> probabilities that depend on each image only (its mean brightness)."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.calls.append(len(x))
        return _probs(np.round(x.mean(axis=(1, 2)) / 255 * 9).astype(int))


def test_predict_robustness_scores_a_seeded_sample_in_one_call():
    x = np.random.default_rng(0).integers(0, 256, size=(50, 28, 28), dtype=np.uint8)
    probs = _probs(np.arange(50) % 10)
    model = _FakeModel()
    by_set, idx = ev.predict_robustness(model, x, probs, 20, seed=3)
    np.testing.assert_array_equal(idx, robustness.sample(50, 20, 3))
    assert model.calls == [20 * len(robustness.PERTURBATIONS)]  # one predict for all copies
    assert list(by_set) == ["clean", *robustness.PERTURBATIONS]
    np.testing.assert_array_equal(by_set["clean"], probs[idx])
    sets = robustness.perturbed_sets(x[idx], 3)
    for name, xs in sets.items():  # each copy's probabilities are its own images'
        np.testing.assert_array_equal(by_set[name], _FakeModel()(xs))
    again, _ = ev.predict_robustness(_FakeModel(), x, probs, 20, seed=3)
    for name in by_set:
        np.testing.assert_array_equal(by_set[name], again[name])


def test_predict_robustness_all_images():
    x = np.zeros((8, 28, 28), np.uint8)
    by_set, idx = ev.predict_robustness(_FakeModel(), x, _probs(np.zeros(8, int)), None, 0)
    assert idx.tolist() == list(range(8))
    assert all(len(p) == 8 for p in by_set.values())


@pytest.mark.slow
def test_predict_robustness_with_a_real_lenet5(tmp_path):
    from pipeline.core.model import build_lenet5
    from pipeline.testing.project import reference_params

    model = build_lenet5(reference_params().model)  # untrained: shapes and plumbing only
    model.save(tmp_path / "model.keras")
    predict = ev.load_model(tmp_path / "model.keras")
    x = np.random.default_rng(0).integers(0, 256, size=(30, 28, 28), dtype=np.uint8)
    probs = predict(x)
    np.testing.assert_allclose(probs, model.predict(x, verbose=0), atol=1e-6)
    by_set, idx = ev.predict_robustness(predict, x, probs, 10, seed=0)
    assert {p.shape for p in by_set.values()} == {(10, 10)}
    np.testing.assert_allclose(by_set["inverted"].sum(axis=1), 1, rtol=1e-5)
    robust = ev.robust_scores(by_set, np.zeros(30, int)[idx])
    assert all(0 <= v <= 1 for v in robust.values())


@pytest.mark.slow
def test_a_model_without_a_numpy_forward_pass_is_scored_with_keras(tmp_path, caplog):
    import keras

    model = keras.Sequential(
        [keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(10),
         keras.layers.BatchNormalization(), keras.layers.Softmax()]
    )  # fmt: skip
    model.save(tmp_path / "model.keras")
    x = np.random.default_rng(1).integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    with caplog.at_level("INFO"):
        probs = ev.load_model(tmp_path / "model.keras")(x)
    assert "scored with Keras" in caplog.text
    np.testing.assert_allclose(probs, model.predict(x, verbose=0), atol=1e-6)


def test_a_missing_model_file_is_one_line(tmp_path):
    with pytest.raises(DataError, match="missing \\(run the train stage\\)"):
        ev.load_model(tmp_path / "model.keras")
