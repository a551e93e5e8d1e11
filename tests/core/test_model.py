import dataclasses

import numpy as np
import pytest

from pipeline.core.model import build_lenet5, train_flops_per_image
from pipeline.testing.project import reference_params

REFERENCE = reference_params().model  # tanh, max pooling, padding 2 (the paper's 32x32)


def model_params(**changes: object):
    return dataclasses.replace(REFERENCE, **changes)


def trainable_params_per_layer(model) -> dict[str, int]:
    """{"C1": 156, ...} for the layers that have weights."""
    return {
        layer.name: sum(int(w.numpy().size) for w in layer.trainable_weights)
        for layer in model.layers
        if layer.trainable_weights
    }


@pytest.mark.parametrize(
    ("padding", "expected"),
    [
        (2, {"C1": 156, "C3": 2416, "C5": 48120, "F6": 10164, "output": 850}),  # 61,706
        (0, {"C1": 156, "C3": 2416, "C5": 30840, "F6": 10164, "output": 850}),  # 44,426
    ],
)
def test_trainable_parameters_per_layer(padding, expected):
    model = build_lenet5(model_params(padding=padding))
    assert trainable_params_per_layer(model) == expected
    assert model.count_params() == sum(expected.values())


@pytest.mark.bf16
def test_mixed_bfloat16_computes_in_bfloat16_on_float32_weights():
    model = build_lenet5(REFERENCE, "mixed_bfloat16")
    assert model.count_params() == 61_706
    assert {layer.compute_dtype for layer in model.layers[:-1]} == {"bfloat16"}
    assert all(w.dtype == "float32" for w in model.weights)
    x = np.random.default_rng(0).integers(0, 256, size=(4, 28, 28)).astype("float32")
    probs = model(x)
    assert model.layers[-1].compute_dtype == "float32" and probs.dtype == "float32"
    np.testing.assert_allclose(np.asarray(probs).sum(axis=1), 1.0, rtol=1e-6)


def test_shapes_follow_the_paper():
    assert REFERENCE.padding == 2
    model = build_lenet5(REFERENCE)
    shapes = {layer.name: tuple(layer.output.shape[1:]) for layer in model.layers}
    assert shapes["pad"] == (32, 32, 1)
    assert shapes["C1"] == (28, 28, 6)
    assert shapes["S2"] == (14, 14, 6)
    assert shapes["C3"] == (10, 10, 16)
    assert shapes["S4"] == (5, 5, 16)
    assert shapes["flatten"] == (400,)


@pytest.mark.parametrize(
    "cfg",
    [
        model_params(activation="relu", pooling="average"),
        model_params(activation="tanh", pooling="max"),
    ],
)
def test_takes_raw_pixels_and_returns_probabilities(cfg):
    model = build_lenet5(cfg)
    x = np.random.default_rng(0).integers(0, 256, size=(4, 28, 28)).astype("uint8")
    probs = np.asarray(model(x.astype("float32")))
    assert probs.shape == (4, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    conv = model.get_layer("C1")
    assert conv.activation.__name__ == cfg.activation
    assert type(model.get_layer("S2")).__name__.lower().startswith(cfg.pooling)


@pytest.mark.parametrize(
    ("padding", "macs"),
    [
        # multiply-adds per image: C1 out²·6·25, C3 out²·16·150, then the dense layers
        (2, {"C1": 28 * 28 * 150, "C3": 10 * 10 * 2400, "C5": 48000, "F6": 10080, "output": 840}),
        (0, {"C1": 24 * 24 * 150, "C3": 8 * 8 * 2400, "C5": 30720, "F6": 10080, "output": 840}),
    ],
)
def test_training_flops_count_forward_and_both_gradients(padding, macs):
    flops = train_flops_per_image(build_lenet5(model_params(padding=padding)))
    assert flops == {k: (4 if k == "C1" else 6) * m for k, m in macs.items()}
    # about 2.26 MFLOP per image at 32×32 and 1.52 MFLOP at 28×28
    assert sum(flops.values()) == {2: 2_263_920, 0: 1_517_040}[padding]
