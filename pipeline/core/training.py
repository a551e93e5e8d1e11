"""The training core shared by the train stage and sweep trials (pipeline.tune).

Both call :func:`prepare` then :func:`Prepared.fit`: the same data slice, seed, model and
recipe, so a sweep trial and ``dvc exp run`` with its params train identically.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time

import numpy as np
import pandas as pd

from pipeline.core import cli, loop
from pipeline.core.backend import keras, tf
from pipeline.core.data import load_split, load_split_or_empty
from pipeline.core.errors import ParamsError, PipelineError
from pipeline.core.hardware import bfloat16_problem
from pipeline.core.layout import FEEDBACK_DIR
from pipeline.core.metrics import float32_value
from pipeline.core.model import build_lenet5
from pipeline.core.params import Params, TrainParams

log = logging.getLogger(__name__)


def set_threads(threads: int | None) -> None:
    """TensorFlow's intra/inter-op thread pools (None: TF's default, all cores).

    Must run before TensorFlow runs anything: the pools are fixed once it has.
    """
    if threads is not None:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def train_split(cfg: TrainParams) -> tuple[np.ndarray, np.ndarray]:
    """The prepared train split, cut to ``train.max_samples`` images when set."""
    x, y = load_split("train")
    if cfg.max_samples is not None:
        x, y = x[: cfg.max_samples], y[: cfg.max_samples]
    return x, y


def mix(
    mnist: tuple[np.ndarray, np.ndarray],
    feedback: tuple[np.ndarray, np.ndarray],
    repeat: int,
    rotate: int = 0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """MNIST's images, then each feedback image ``repeat`` times (the loop shuffles every
    epoch). No feedback, or ``repeat`` 0: MNIST's arrays themselves, so the run is the one
    it was before feedback existed. ``rotate`` > 0: every copy after the first is turned
    by a seeded whole number of degrees in ±``rotate`` (a few hundred labelled images
    are not a few hundred poses)."""
    if repeat == 0 or len(feedback[1]) == 0:
        return mnist
    copies = np.tile(feedback[0], (repeat, 1, 1))  # (r·F, 28, 28)
    if rotate and repeat > 1:
        from pipeline.core.robustness import rotate_by  # (SciPy, only when asked)

        rest = copies[len(feedback[1]) :]
        angles = np.random.default_rng(seed).integers(-rotate, rotate + 1, size=len(rest))
        copies[len(feedback[1]) :] = rotate_by(rest, angles)
    x = np.concatenate([mnist[0], copies])  # (N + r·F, 28, 28)
    y = np.concatenate([mnist[1], np.tile(feedback[1], repeat)])
    return x, y


class TrainingDiverged(PipelineError):
    """The loss became NaN or infinite."""


def precision_problem(precision: str) -> str | None:
    """Why ``train.precision`` cannot train fast here (mixed_bfloat16 without bf16
    hardware: see core.hardware), as the one-line error; None when it can."""
    if precision != "mixed_bfloat16":
        return None
    if problem := bfloat16_problem(gpus=len(tf.config.list_physical_devices("GPU"))):
        return f"train.precision: mixed_bfloat16 needs bf16 hardware, and {problem}: use float32"
    return None


def check_precision(precision: str) -> None:
    if problem := precision_problem(precision):
        raise ParamsError(problem)


def make_deterministic(seed: int) -> None:
    """Same params + same data -> same weights, to the last digit (on CPU)."""
    keras.config.disable_interactive_logging()  # one line per epoch, no progress bars in logs
    keras.utils.set_random_seed(seed)  # Python, NumPy and TensorFlow
    tf.config.experimental.enable_op_determinism()


def learning_rate(
    cfg: TrainParams, steps_per_epoch: int
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The constant rate, or a Keras schedule stepped per batch."""
    lr, sched = cfg.learning_rate, keras.optimizers.schedules
    if cfg.lr_schedule == "cosine":
        warmup = int(cfg.warmup_epochs * steps_per_epoch)
        total = cfg.epochs * steps_per_epoch
        if warmup:
            return sched.CosineDecay(
                0.0, max(1, total - warmup), warmup_target=lr, warmup_steps=warmup
            )
        return sched.CosineDecay(lr, total)
    if cfg.lr_schedule in ("exponential", "step"):
        return sched.ExponentialDecay(
            lr,
            max(1, int(cfg.lr_decay_epochs * steps_per_epoch)),
            cfg.lr_decay_rate,
            staircase=cfg.lr_schedule == "step",
        )
    return lr


def make_optimizer(cfg: TrainParams, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    lr = learning_rate(cfg, steps_per_epoch)
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(lr)
    if cfg.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay)
    return keras.optimizers.RMSprop(lr, momentum=cfg.momentum)


def compile_model(params: Params, steps_per_epoch: int) -> keras.Sequential:
    model = build_lenet5(params.model, params.train.precision)
    model.compile(
        optimizer=make_optimizer(params.train, steps_per_epoch),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=params.train.label_smoothing),
        metrics=["accuracy"],
    )
    return model


def fit(
    model: keras.Model,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    cfg: TrainParams,
    callbacks: list[keras.callbacks.Callback],
) -> pd.DataFrame:
    """Train; return the per-epoch history (epoch, loss, accuracy, val_loss, val_accuracy).

    Raises TrainingDiverged when the loss stops being finite, KeyboardInterrupt after an
    epoch in which SIGINT/SIGTERM arrived (if the handler's own one was swallowed).
    """
    callbacks = [*callbacks, StopOnSignal()]
    if cfg.loop == "compiled":
        augment = loop.augmenter(cfg.augment_shift, cfg.augment_rotate, cfg.seed)
        hist = loop.fit_compiled(
            model,
            train,
            val,
            batch_size=cfg.batch_size,
            epochs=cfg.epochs,
            seed=cfg.seed,
            augment=augment,
            callbacks=callbacks,
        )
    else:
        one_hot = lambda y: keras.utils.to_categorical(y, 10)  # noqa: E731
        hist = model.fit(
            train[0],
            one_hot(train[1]),
            validation_data=(val[0], one_hot(val[1])),
            batch_size=cfg.batch_size,
            epochs=cfg.epochs,
            shuffle=True,
            verbose=2,
            callbacks=[keras.callbacks.TerminateOnNaN(), *callbacks],
        ).history
    history = pd.DataFrame(hist)[["loss", "accuracy", "val_loss", "val_accuracy"]]
    history.insert(0, "epoch", np.arange(1, len(history) + 1))
    losses = history["loss"].to_numpy()
    if len(history) == 0 or not np.isfinite(losses).all():
        bad = int(history["epoch"][~np.isfinite(losses)].min()) if len(history) else 1
        raise TrainingDiverged(
            f"training diverged: loss is not finite at epoch {bad} (lower train.learning_rate?)"
        )
    return history


class StopOnSignal(keras.callbacks.Callback):
    """Ends training at an epoch's end if SIGINT/SIGTERM arrived since it started, in case
    the handler's own KeyboardInterrupt was swallowed (see cli.signals_received)."""

    def __init__(self) -> None:
        super().__init__()
        self.before = cli.signals_received()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if cli.signals_received() > self.before:
            raise KeyboardInterrupt("interrupted")


@dataclasses.dataclass
class Prepared:
    """A compiled model and the data it trains on, ready to :meth:`fit`."""

    params: Params
    model: keras.Sequential
    train: tuple[np.ndarray, np.ndarray]  # x: (N, 28, 28) uint8, y: (N,) uint8
    val: tuple[np.ndarray, np.ndarray]
    steps_per_epoch: int
    feedback: tuple[np.ndarray, np.ndarray]  # the labelled production images mixed in

    def fit(self, callbacks: list[keras.callbacks.Callback]) -> Trained:
        """Train with the recipe; the history and the training's wall time."""
        start = time.perf_counter()
        history = fit(self.model, self.train, self.val, self.params.train, callbacks)
        return Trained(history, time.perf_counter() - start)


@dataclasses.dataclass(frozen=True)
class Trained:
    history: pd.DataFrame  # one row per epoch: epoch, loss, accuracy, val_loss, val_accuracy
    seconds: float

    def run_metrics(self) -> dict[str, float]:
        """What every training logs on its run besides the per-epoch curves: the final
        model's val metrics (what register ranks on), the best epoch's, the seconds."""
        return {
            **self.final(),
            "best_val_accuracy": float32_value(self.history["val_accuracy"].max()),
            "train_seconds": round(self.seconds, 2),
        }

    def final(self) -> dict[str, float]:
        """The final model's val_accuracy and val_loss."""
        last = self.history.iloc[-1]
        return {
            "val_accuracy": float32_value(last["val_accuracy"]),
            "val_loss": float32_value(last["val_loss"]),
        }


def prepare(params: Params) -> Prepared:
    """Seed everything, load the (sliced) train split and val, build and compile LeNet-5.

    TensorFlow's threads (``set_threads``) must be set before this, by the caller.
    """
    check_precision(params.train.precision)
    make_deterministic(params.train.seed)
    feedback = load_split_or_empty("train", FEEDBACK_DIR)  # labelled production images
    cfg = params.train
    train = mix(train_split(cfg), feedback, cfg.feedback_repeat, cfg.feedback_rotate, cfg.seed)
    val = load_split("val")
    steps = math.ceil(len(train[0]) / params.train.batch_size)
    return Prepared(params, compile_model(params, steps), train, val, steps, feedback)
