"""The compiled epoch loop against Keras' own fit, on a small synthetic problem."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.core.loop import CompiledLoop, _call, augmenter, split_inputs
from pipeline.core.params import Params
from pipeline.core.training import TrainingDiverged, compile_model, fit
from pipeline.testing.project import reference_params


def toy_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Digits 0-9 as bright squares at 10 positions: learnable in a few epochs."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n).astype(np.uint8)
    x = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
    for i, label in enumerate(y):
        r, c = divmod(int(label), 5)
        x[i, 4 + 10 * r : 12 + 10 * r, 1 + 5 * c : 6 + 5 * c] = 255
    return x, y


def params(**train) -> Params:
    """The reference recipe (params.yaml) with these train keys changed, checked."""
    return reference_params({f"train.{k}": v for k, v in train.items()})


@pytest.mark.parametrize("loop", ["compiled", "fit"])
def test_both_loops_learn_and_report_the_same_history(loop):
    keras.utils.set_random_seed(0)
    p = params(loop=loop, optimizer="adam", learning_rate=0.003, batch_size=32, epochs=3)
    train, val = toy_data(640), toy_data(200, seed=1)
    history = fit(compile_model(p, 20), train, val, p.train, [])
    assert list(history.columns) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]
    assert history["epoch"].tolist() == [1, 2, 3]
    assert history["val_accuracy"].iloc[-1] > 0.9
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]


def test_compiled_loop_reports_epoch_means_that_evaluate_agrees_with():
    keras.utils.set_random_seed(0)
    p = params(optimizer="adam", learning_rate=0.003, batch_size=32, epochs=2)
    train, val = toy_data(320), toy_data(100, seed=1)
    model = compile_model(p, 10)
    history = fit(model, train, val, p.train, [])
    loss, acc = _evaluate(model, val)
    assert history["val_loss"].iloc[-1] == pytest.approx(loss, rel=1e-4)
    assert history["val_accuracy"].iloc[-1] == pytest.approx(acc)


def _evaluate(model, val):
    """Validation loss and accuracy computed independently of the loop."""
    probs = model.predict(val[0], verbose=0)
    loss = float(keras.losses.CategoricalCrossentropy()(np.eye(10)[val[1]], probs))
    return loss, float((probs.argmax(1) == val[1]).mean())


@pytest.mark.parametrize("loop", ["compiled", "fit"])
def test_divergence_raises(loop):
    keras.utils.set_random_seed(0)
    p = params(loop=loop, learning_rate=1e4, batch_size=32, epochs=2)
    p = dataclasses.replace(p, model=dataclasses.replace(p.model, activation="relu"))
    with pytest.raises(TrainingDiverged, match="loss is not finite at epoch 1"):
        fit(compile_model(p, 10), toy_data(320), toy_data(64, 1), p.train, [])


def test_augmenter_shifts_and_rotates_but_keeps_shape():
    assert augmenter(0, 0, seed=1) is None
    aug = augmenter(2, 10, seed=1)
    x = toy_data(8)[0][..., None].astype("float32")
    out = np.asarray(aug(x, training=True))
    assert out.shape == x.shape
    assert not np.allclose(out, x)
    np.testing.assert_allclose(np.asarray(aug(x, training=False)), x)


def test_fit_loop_rejects_augmentation():
    from pipeline.core.params import ParamsError

    with pytest.raises(ParamsError, match="train.loop: augmentation"):
        params(loop="fit", augment_shift=2)
    assert params(augment_shift=2).train.augment_shift == 2


def test_input_layers_are_split_off_and_match_scaling_and_padding():
    model = compile_model(params(), 10)
    head, trunk = split_inputs(model)
    assert [layer.name for layer in head] == ["channel", "scale", "pad"]
    assert trunk[0].name == "C1" and trunk[-1].name == "output"
    x = toy_data(4)[0]
    out = np.asarray(_call(head, x.astype("float32"), training=False))
    expected = np.pad(x.astype("float32") * np.float32(1 / 255), ((0, 0), (2, 2), (2, 2)))
    np.testing.assert_array_equal(out[..., 0], expected)


def test_prepared_inputs_train_like_the_full_model_step_by_step():
    """The loop's precomputed inputs + layers after "pad" == the whole model per batch."""
    p = params(optimizer="adam", learning_rate=0.003, batch_size=32)
    train, val = toy_data(96), toy_data(32, seed=1)
    keras.utils.set_random_seed(0)
    looped = compile_model(p, 3)
    reference = compile_model(p, 3)
    reference.set_weights(looped.get_weights())
    CompiledLoop(looped, train, val, batch_size=32, seed=7).run_epoch()
    reference.optimizer.build(reference.trainable_variables)
    order = np.random.default_rng(7).permutation(len(train[0]))
    for i in range(0, len(order), 32):
        idx = order[i : i + 32]
        with tf.GradientTape() as tape:
            probs = reference(train[0][idx].astype("float32"), training=True)
            loss = reference.loss(tf.one_hot(train[1][idx], 10), probs)
        grads = tape.gradient(loss, reference.trainable_variables)
        reference.optimizer.apply_gradients(zip(grads, reference.trainable_variables, strict=True))
    for a, b in zip(looped.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert not np.allclose(looped.get_weights()[0], compile_model(p, 3).get_weights()[0])


def trained(q: Params, train, val) -> tuple[list[np.ndarray], float]:
    """A fresh model trained with ``q`` from seed 0: its weights and final val_accuracy."""
    from pipeline.core.training import make_deterministic

    make_deterministic(0)
    model = compile_model(q, 20)
    history = fit(model, train, val, q.train, [])
    return model.get_weights(), history["val_accuracy"].iloc[-1]


@pytest.mark.bf16
@pytest.mark.parametrize("loop", ["compiled", "fit"])
def test_mixed_bfloat16_learns_and_is_reproducible(loop):
    """train.precision: mixed_bfloat16 trains in bf16 (not float32's weights), run to run
    to the last bit, and keeps float32 weights."""
    p = params(loop=loop, optimizer="adam", learning_rate=0.003, batch_size=32, epochs=3)
    bf16 = dataclasses.replace(p, train=dataclasses.replace(p.train, precision="mixed_bfloat16"))
    train, val = toy_data(640), toy_data(200, seed=1)

    (first, acc), (again, _), (f32, _) = (trained(q, train, val) for q in (bf16, bf16, p))
    assert acc > 0.9
    assert all(w.dtype == np.float32 for w in first)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], f32[0])  # the math did run in bfloat16


def test_the_compiled_loop_trains_on_augmented_digits_reproducibly():
    """train.augment_*: the epoch (a tf.while_loop, no AutoGraph) runs the random shift and
    rotation layers on every batch, the same ones run to run, and still learns."""
    augmented = params(
        optimizer="adam", learning_rate=0.003, batch_size=32, epochs=3,
        augment_shift=2, augment_rotate=10,
    )  # fmt: skip
    plain = dataclasses.replace(
        augmented, train=dataclasses.replace(augmented.train, augment_shift=0, augment_rotate=0)
    )
    train, val = toy_data(640), toy_data(200, seed=1)

    (first, acc), (again, _), (unaugmented, _) = (
        trained(q, train, val) for q in (augmented, augmented, plain)
    )
    assert acc > 0.8
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], unaugmented[0])  # the digits were moved
