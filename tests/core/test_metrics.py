import numpy as np
import pytest

from pipeline.core.metrics import confusion, cross_entropy, per_class


def test_confusion_rows_are_true_labels():
    y = np.array([0, 0, 1, 2, 2, 2])
    pred = np.array([0, 1, 1, 2, 2, 0])
    cm = confusion(y, pred, n_classes=3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_per_class_precision_recall_f1():
    cm = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    table = per_class(cm)
    assert table["precision"].tolist() == pytest.approx([0.5, 0.5, 1.0])
    assert table["recall"].tolist() == pytest.approx([0.5, 1.0, 2 / 3])
    assert table["f1"].tolist() == pytest.approx([0.5, 2 / 3, 0.8])
    assert table["support"].tolist() == [2, 1, 3]


def test_per_class_handles_a_class_never_predicted():
    table = per_class(np.array([[2, 0], [1, 0]]))
    assert table["precision"].tolist() == [pytest.approx(2 / 3), 0.0]
    assert table["f1"].iloc[1] == 0.0


def test_cross_entropy_matches_keras():
    import keras

    rng = np.random.default_rng(1)
    logits = rng.normal(size=(32, 10))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = rng.integers(0, 10, 32)
    expected = float(keras.losses.CategoricalCrossentropy()(np.eye(10)[y], probs))
    assert cross_entropy(probs, y) == pytest.approx(expected, rel=1e-5)


def test_float32_figures_are_logged_as_meant():
    from pipeline.core.metrics import float32_value

    # 4453 / 5000 as a float32 mean over batches: 0.89059997; as meant: 0.8906
    assert float32_value(np.float32(0.89059997)) == 0.8906
    assert float32_value(0.9083999991416931) == 0.9084
    assert float32_value(np.float32(2.1779580116)) == 2.17796
