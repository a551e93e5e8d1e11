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
import tensorflow as tf

from pipeline.core import plots, tracking
from pipeline.core.cli import run
from pipeline.core.data import atomic_write, load_split, split_md5, write_json
from pipeline.core.layout import (
    CURVES_FILE,
    HISTORY_FILE,
    MODEL_FILE,
    PREPARED_DIR,
    RUN_FILE,
    TRAIN_METRICS_FILE,
)
from pipeline.core.params import load_params
from pipeline.core.training import compile_model, fit, make_deterministic, set_threads, train_split

log = logging.getLogger(__name__)


def main() -> None:
    params = load_params()
    cfg = params.train
    set_threads(cfg.threads)
    make_deterministic(cfg.seed)
    experiment_id = tracking.connect(params.tracking.experiment)  # fail before training

    x_train, y_train = train_split(cfg)
    val = load_split("val")
    steps = math.ceil(len(x_train) / cfg.batch_size)
    model = compile_model(params, steps)
    md5 = split_md5("train", "val", "test")
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
