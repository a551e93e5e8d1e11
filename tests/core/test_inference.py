"""The NumPy forward pass against Keras itself, on every model the params allow."""

import itertools
import json
import zipfile

import numpy as np
import pytest

from pipeline.core.errors import DataError
from pipeline.core.inference import NumpyModel, UnsupportedModel

VARIANTS = list(itertools.product(["tanh", "relu"], ["max", "average"], [0, 2]))


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(1100, 28, 28), dtype=np.uint8)  # two batches of 1,024
    x[:50] = 0  # blank images: ties that a different order of sums could break differently
    return x


@pytest.mark.slow
@pytest.mark.parametrize(("activation", "pooling", "padding"), VARIANTS)
def test_probabilities_equal_keras(tmp_path, images, activation, pooling, padding):
    import keras

    from pipeline.core.model import build_lenet5
    from pipeline.core.params import ModelParams

    keras.utils.set_random_seed(7)
    model = build_lenet5(ModelParams(activation=activation, pooling=pooling, padding=padding))
    # trained-looking weights: larger than the initial ones, so every layer matters
    model.set_weights([w * 3 for w in model.get_weights()])
    model.save(tmp_path / "m.keras")
    expected = model.predict(images, batch_size=256, verbose=0)
    got = NumpyModel.load(tmp_path / "m.keras").predict(images)
    assert got.dtype == np.float32 and got.shape == (1100, 10)
    np.testing.assert_allclose(got, expected, atol=1e-5)  # float32 sums in another order
    assert (got.argmax(axis=1) == expected.argmax(axis=1)).mean() > 0.999


def _with_layer(tmp_path, layer_config: dict):
    """A copy of a saved model file with one more layer in its config."""
    import keras

    from pipeline.core.model import build_lenet5
    from pipeline.testing.project import reference_params

    build_lenet5(reference_params().model).save(tmp_path / "m.keras")
    with zipfile.ZipFile(tmp_path / "m.keras") as z:
        files = {n: z.read(n) for n in z.namelist()}
    config = json.loads(files["config.json"])
    config["config"]["layers"].append(layer_config)
    files["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(tmp_path / "edited.keras", "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    del keras
    return tmp_path / "edited.keras"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("layer", "message"),
    [
        ({"class_name": "Dropout", "config": {"rate": 0.5}}, "layer Dropout"),
        ({"class_name": "Dense", "config": {"units": 3, "activation": "gelu"}}, "gelu"),
    ],
)
def test_other_layers_are_unsupported_not_guessed(tmp_path, layer, message):
    with pytest.raises(UnsupportedModel, match=message):
        NumpyModel.load(_with_layer(tmp_path, layer))


@pytest.mark.slow
def test_a_bfloat16_model_is_left_to_keras(tmp_path):
    """train.precision: mixed_bfloat16 computes in bf16 when served: scored in float32
    here, its probabilities would not be the served model's."""
    from pipeline.core.model import build_lenet5
    from pipeline.testing.project import reference_params

    build_lenet5(reference_params().model, "mixed_bfloat16").save(tmp_path / "m.keras")
    with pytest.raises(UnsupportedModel, match="Reshape computing in mixed_bfloat16"):
        NumpyModel.load(tmp_path / "m.keras")


def test_a_file_that_is_no_model_is_a_data_error(tmp_path):
    (tmp_path / "m.keras").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a Keras model file"):
        NumpyModel.load(tmp_path / "m.keras")
    with pytest.raises(DataError, match="missing"):
        NumpyModel.load(tmp_path / "none.keras")


def test_an_empty_batch_has_no_rows():
    assert NumpyModel([]).predict(np.zeros((0, 28, 28), np.uint8)).shape == (0, 10)


def _blas_threads() -> set[int]:
    from threadpoolctl import threadpool_info

    return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}


def test_each_batch_runs_on_a_one_thread_blas_and_the_setting_comes_back():
    from threadpoolctl import threadpool_limits

    seen = []

    def probe(x: np.ndarray) -> np.ndarray:  # a "layer" that records the BLAS's threads
        seen.append(_blas_threads())
        return np.zeros((len(x), 10), np.float32)

    with threadpool_limits(limits=2, user_api="blas"):  # a thread per core of 2 cores
        out = NumpyModel([probe]).predict(np.zeros((300, 28, 28), np.uint8))
        assert _blas_threads() == {2}
    assert out.shape == (300, 10)
    assert seen == [{1}] * 3  # three batches of at most BATCH (128)
