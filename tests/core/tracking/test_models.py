"""Logged models, and the test predictions the gate takes from evaluate's log."""

import numpy as np
import pytest

from pipeline.core import tracking
from pipeline.core.errors import TrackingError


@pytest.mark.slow
def test_a_logged_model_has_its_signature_and_predicts_as_keras(experiment_id):
    from pipeline.core.model import build_lenet5
    from pipeline.testing.project import reference_params

    model = build_lenet5(reference_params().model)
    x = np.random.default_rng(0).integers(0, 256, size=(12, 28, 28), dtype=np.uint8)
    with tracking.active_run(experiment_id=experiment_id):
        uri = tracking.log_model(model, x[:5])
    info = tracking.model_info(uri)
    assert info.flavors.keys() >= {"keras", "python_function"}
    inputs, outputs = info.signature.inputs.inputs[0], info.signature.outputs.inputs[0]
    assert (str(inputs.type), inputs.shape) == ("uint8", (-1, 28, 28))
    assert (str(outputs.type), outputs.shape) == ("float32", (-1, 10))
    probs = np.asarray(tracking.load_pyfunc(uri).predict(x))
    np.testing.assert_allclose(probs, model.predict(x, verbose=0), atol=1e-6)
    # The gate, compare, report and predict score with the service's NumPy forward pass
    np.testing.assert_allclose(tracking.predict_probabilities(uri, x), probs, atol=1e-5)
    assert tracking.predicted_labels(uri, x).tolist() == probs.argmax(axis=1).tolist()


@pytest.mark.slow
def test_a_model_the_numpy_pass_does_not_implement_is_scored_with_keras(experiment_id, caplog):
    from pipeline.core.backend import keras

    model = keras.Sequential([
        keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.BatchNormalization(),
        keras.layers.Dense(10, activation="softmax"),
    ])  # fmt: skip
    x = np.random.default_rng(1).integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    with tracking.active_run(experiment_id=experiment_id):
        uri = tracking.log_model(model, x[:2])
    with caplog.at_level("INFO"):
        probs = tracking.predict_probabilities(uri, x)
    assert "layer BatchNormalization, predicting with Keras" in caplog.text
    np.testing.assert_allclose(probs, model.predict(x, verbose=0), atol=1e-6)


def _evaluated_run(experiment_id, digest: str, rows: str) -> str:
    with tracking.active_run(experiment_id=experiment_id, tags={"data.test.md5": digest}) as rid:
        tracking.log_text(rows, tracking.PREDICTIONS_ARTIFACT)
    return rid


def test_logged_labels_are_the_predictions_evaluate_logged(experiment_id):
    y = np.array([3, 1, 4, 1])
    rid = _evaluated_run(experiment_id, "abc", "actual,predicted\n3,3\n1,7\n4,4\n1,1\n")
    found = tracking.logged_labels(tracking.LoggedTest(rid, y, "abc"))
    assert found.tolist() == [3, 7, 4, 1]
    # predicted_labels takes them only while the model itself is still there
    with pytest.raises(TrackingError, match="cannot load models:/none/1"):
        tracking.predicted_labels("models:/none/1", y, tracking.LoggedTest(rid, y, "abc"))


@pytest.mark.parametrize(
    ("digest", "y", "rows"),
    [
        ("other", [3, 1], "actual,predicted\n3,3\n1,1\n"),  # another test split
        ("abc", [3, 2], "actual,predicted\n3,3\n1,1\n"),  # other images' labels
        ("abc", [3, 1, 4], "actual,predicted\n3,3\n1,1\n"),  # fewer rows
        ("abc", [3, 1], "actual,predicted\n3,x\n1,1\n"),  # unreadable
    ],
)
def test_logged_labels_of_other_images_are_not_used(experiment_id, digest, y, rows):
    rid = _evaluated_run(experiment_id, "abc", rows)
    assert tracking.logged_labels(tracking.LoggedTest(rid, np.array(y), digest)) is None


def test_a_run_without_logged_predictions_has_no_logged_labels(experiment_id):
    with tracking.active_run(experiment_id=experiment_id, tags={"data.test.md5": "abc"}) as rid:
        pass
    assert tracking.logged_labels(tracking.LoggedTest(rid, np.array([1]), "abc")) is None
    assert tracking.logged_labels(tracking.LoggedTest("0" * 32, np.array([1]), "abc")) is None
