"""A compiled training loop: one ``tf.function`` call runs a whole epoch.

``model.fit`` returns to Python after every batch (or every ``steps_per_execution``
batches) and feeds batches through an input adapter; for a 61k-parameter model those
overheads cost about as much as the math. Here the data sits in memory as tensors and a
``tf.while_loop`` gathers, augments and steps through a whole epoch at once, on the GPU
when there is one. Without augmentation the model's input layers (reshape, rescale,
zero-pad: no weights) run once over the whole training set, and each step gathers the
padded float images and calls only the layers after them, sharing their weights: the
same arithmetic in the same order, so the same weights to the last bit, without the
cast, reshape, rescale and pad ops in every step. Semantics match ``fit``: same
optimizer, loss, batch order from a seeded permutation, epoch-mean ``loss``/``accuracy``,
``val_loss``/``val_accuracy``, and Keras callbacks get ``on_epoch_end`` with those logs.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from pipeline.core.backend import keras, tf

log = logging.getLogger(__name__)


def augmenter(shift_px: int, rotate_deg: float, seed: int) -> keras.Sequential | None:
    """Random shifts (± pixels) and rotations (± degrees) of 28×28 digits, or None."""
    augment = []
    if shift_px:
        f = shift_px / 28
        augment.append(keras.layers.RandomTranslation(f, f, fill_mode="constant", seed=seed))
    if rotate_deg:
        augment.append(
            keras.layers.RandomRotation(rotate_deg / 360, fill_mode="constant", seed=seed + 1)
        )
    return keras.Sequential(augment) if augment else None


def split_inputs(model: keras.Model) -> tuple[list[keras.Layer], list[keras.Layer]]:
    """(input layers up to and including "pad", the layers after it); ([], all) without
    a "pad" layer. The input layers must have no weights: their output is precomputed."""
    names = [layer.name for layer in model.layers]
    cut = names.index("pad") + 1 if "pad" in names else 0
    head, trunk = model.layers[:cut], model.layers[cut:]
    assert not any(layer.weights for layer in head), "input layers must have no weights"
    return head, trunk


def _call(layers: list[keras.Layer], x: tf.Tensor, training: bool) -> tf.Tensor:
    for layer in layers:
        x = layer(x, training=training)
    return x


class CompiledLoop:
    """Holds the data as tensors and the traced epoch; ``run_epoch()`` trains one epoch."""

    def __init__(
        self,
        model: keras.Model,
        train: tuple[np.ndarray, np.ndarray],
        val: tuple[np.ndarray, np.ndarray],
        *,
        batch_size: int,
        seed: int,
        augment: keras.Sequential | None = None,
        jit_compile: bool = False,
    ) -> None:
        self.model = model
        self.head, self.trunk = split_inputs(model)
        if augment is None:
            # (N, 32, 32, 1) float32 (225 MB for MNIST at 32×32): scaled and padded once.
            self.x = tf.constant(_call(self.head, tf.cast(train[0], "float32"), training=False))
        else:  # augmentation works on the raw 28×28 digits, so the full model runs per step
            self.x = tf.constant(train[0])  # (N, 28, 28) uint8: 43 MB for all of MNIST
        self.y = tf.constant(train[1].astype("int32"))
        self.x_val, self.y_val = tf.constant(val[0]), tf.constant(val[1].astype("int32"))
        self.n, self.batch_size, self.augment = len(train[0]), batch_size, augment
        self.rng = np.random.default_rng(seed)
        model.optimizer.build(model.trainable_variables)
        # jit_compile: the epoch through XLA (benchmarks/peers.py measures it; not the default).
        # autograph=False: the loops are tf.while_loop already, and AutoGraph would transpile
        # every Keras layer's call for nothing (0.15 of the traces' 0.36 s profiled).
        self._train_epoch = tf.function(
            self._train_epoch_fn, jit_compile=jit_compile, autograph=False
        )
        self._evaluate = tf.function(self._evaluate_fn, jit_compile=jit_compile, autograph=False)

    def _batch(
        self, xb: tf.Tensor, yb: tf.Tensor, training: bool, prepared: bool = False
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """Loss and correct count; ``prepared``: xb went through the input layers already."""
        if prepared:
            probs = _call(self.trunk, xb, training=training)  # (B, 10)
        else:
            probs = self.model(tf.cast(xb, "float32"), training=training)
        loss = self.model.loss(tf.one_hot(yb, 10), probs)
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(probs, 1, "int32"), yb), "float32"))
        return loss, correct

    def _train_epoch_fn(self, order: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        model, b = self.model, self.batch_size

        def step(i: tf.Tensor, loss_sum: tf.Tensor, correct: tf.Tensor) -> tuple:
            idx = order[i * b : (i + 1) * b]
            xb, yb = tf.gather(self.x, idx), tf.gather(self.y, idx)
            if self.augment is not None:
                xb = self.augment(xb[..., None], training=True)[..., 0]
            with tf.GradientTape() as tape:
                loss, hits = self._batch(xb, yb, training=True, prepared=self.augment is None)
            grads = tape.gradient(loss, model.trainable_variables)
            model.optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            # Weighted by batch size: the mean over samples, as fit reports it.
            return i + 1, loss_sum + loss * tf.cast(tf.shape(idx)[0], "float32"), correct + hits

        steps = -(-self.n // b)
        _, loss_sum, correct = tf.while_loop(
            lambda i, *_: i < steps, step, (tf.constant(0), tf.constant(0.0), tf.constant(0.0))
        )
        return loss_sum / self.n, correct / self.n

    def _evaluate_fn(self, xs: tf.Tensor, ys: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        def chunk(i: tf.Tensor, loss_sum: tf.Tensor, correct: tf.Tensor) -> tuple:
            xb, yb = xs[i : i + 1024], ys[i : i + 1024]
            loss, hits = self._batch(xb, yb, training=False)
            return i + 1024, loss_sum + loss * tf.cast(tf.shape(yb)[0], "float32"), correct + hits

        m = tf.shape(ys)[0]
        _, loss_sum, correct = tf.while_loop(
            lambda i, *_: i < m, chunk, (tf.constant(0), tf.constant(0.0), tf.constant(0.0))
        )
        size = tf.cast(m, "float32")
        return loss_sum / size, correct / size

    def run_epoch(self) -> dict[str, float]:
        """One pass over the training data in a fresh seeded order; then validation."""
        order = tf.constant(self.rng.permutation(self.n).astype("int32"))
        loss, acc = self._train_epoch(order)
        val_loss, val_acc = self._evaluate(self.x_val, self.y_val)
        return {
            "loss": float(loss),
            "accuracy": float(acc),
            "val_loss": float(val_loss),
            "val_accuracy": float(val_acc),
        }

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        loss, acc = self._evaluate(tf.constant(x), tf.constant(y.astype("int32")))
        return {"loss": float(loss), "accuracy": float(acc)}


def fit_compiled(
    model: keras.Model,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    *,
    batch_size: int,
    epochs: int,
    seed: int,
    augment: keras.Sequential | None = None,
    callbacks: list[keras.callbacks.Callback] = (),
) -> dict[str, list[float]]:
    """Train a compiled model; return ``{"loss": [...], "accuracy": [...], ...}`` per epoch.

    Stops after the first epoch whose loss is not finite (the caller decides what that
    means), like ``keras.callbacks.TerminateOnNaN``.
    """
    loop = CompiledLoop(model, train, val, batch_size=batch_size, seed=seed, augment=augment)
    for cb in callbacks:
        cb.set_model(model)
    history: dict[str, list[float]] = {}
    for epoch in range(epochs):
        start = time.perf_counter()
        logs = loop.run_epoch()
        for key, value in logs.items():
            history.setdefault(key, []).append(value)
        log.info(
            "epoch %d/%d - %.1fs - %s",
            epoch + 1,
            epochs,
            time.perf_counter() - start,
            " - ".join(f"{k}: {v:.4f}" for k, v in logs.items()),
        )
        for cb in callbacks:
            cb.on_epoch_end(epoch, logs)
        if not np.isfinite(logs["loss"]):
            break
    return history
