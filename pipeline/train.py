"""Stage ``train``: fit LeNet-5 on the prepared split with the recipe in params.yaml.

Outputs (under data/train/): model.keras, history.csv (one row per epoch; DVC plots),
metrics.json (final val_accuracy/val_loss and training seconds; DVC metrics) and run.json
(the MLflow run id that the evaluate stage continues).
"""

from __future__ import annotations

import logging
import math
import time

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from pipeline import loop, plots, tracking
from pipeline.cli import run
from pipeline.data import atomic_write, file_md5, load_split, write_json
from pipeline.errors import PipelineError
from pipeline.layout import (
    CURVES_FILE,
    HISTORY_FILE,
    MODEL_FILE,
    PREPARED_DIR,
    RUN_FILE,
    TRAIN_METRICS_FILE,
)
from pipeline.model import build_lenet5
from pipeline.params import Params, TrainParams, load_params

log = logging.getLogger(__name__)


class TrainingDiverged(PipelineError):
    """The loss became NaN or infinite."""


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
    model = build_lenet5(params.model)
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

    Raises TrainingDiverged when the loss stops being finite.
    """
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


def main() -> None:
    params = load_params()
    cfg = params.train
    make_deterministic(cfg.seed)
    experiment_id = tracking.connect(params.tracking.experiment)  # fail before training

    x_train, y_train = load_split("train")
    val = load_split("val")
    if cfg.max_samples is not None:
        x_train, y_train = x_train[: cfg.max_samples], y_train[: cfg.max_samples]
    steps = math.ceil(len(x_train) / cfg.batch_size)
    model = compile_model(params, steps)
    md5 = {s: file_md5(PREPARED_DIR / f"{s}.npz") for s in ("train", "val", "test")}
    data_hashes = {f"data.{s}.md5": h for s, h in md5.items()}

    with tracking.active_run(
        experiment_id=experiment_id,
        run_name=tracking.run_name(),
        tags={**tracking.git_tags(), **tracking.dvc_tags(), **data_hashes, "device": _device()},
        system_metrics=params.tracking.system_metrics,
    ) as run_id:
        tracking.log_params(params.flat())
        inputs = {"train": ((x_train, y_train), "training"), "val": (val, "validation")}
        for split, ((x, y), context) in inputs.items():  # the UI's Dataset column
            source = PREPARED_DIR / f"{split}.npz"
            tracking.log_dataset(
                x, y, name=f"mnist-{split}", source=source, digest=md5[split], context=context
            )
        tracking.log_text(_summary(model), "model_summary.txt")
        log.info("training on %d images (%d steps/epoch), run %s", len(x_train), steps, run_id)
        start = time.perf_counter()
        history = fit(model, (x_train, y_train), val, cfg, [tracking.epoch_logger()])
        train_s = time.perf_counter() - start
        tracking.log_metrics(
            {"train_seconds": train_s, "best_val_accuracy": history["val_accuracy"].max()}
        )

        plots.save(plots.learning_curves(history), CURVES_FILE)
        tracking.log_artifact(CURVES_FILE)
        tracking.log_model(model, x_train[:5])
        # Outputs last, each atomically: a failure above leaves no model that looks trained.
        atomic_write(MODEL_FILE, lambda tmp: model.save(tmp), suffix=".keras")
        atomic_write(HISTORY_FILE, lambda tmp: history.to_csv(tmp, index=False))
        final = history.iloc[-1]
        write_json(
            TRAIN_METRICS_FILE,
            {
                "val_accuracy": float(final["val_accuracy"]),
                "val_loss": float(final["val_loss"]),
                "train_seconds": round(train_s, 1),
            },
        )
        write_json(RUN_FILE, {"run_id": run_id, "experiment_id": experiment_id})
    log.info(
        "trained %d epochs in %.1f s; final val_accuracy %.4f",
        len(history),
        train_s,
        history["val_accuracy"].iloc[-1],
    )


def _summary(model: keras.Model) -> str:
    lines: list[str] = []
    model.summary(print_fn=lambda line, **_: lines.append(line))
    return "\n".join(lines) + "\n"


def _device() -> str:
    gpus = tf.config.list_physical_devices("GPU")
    return gpus[0].name if gpus else "CPU"


if __name__ == "__main__":
    run(main)
