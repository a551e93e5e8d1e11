"""Stage ``train``: fit LeNet-5 on the prepared split with the recipe in params.yaml.

Outputs (under data/train/): model.keras, history.csv (one row per epoch; DVC plots),
metrics.json (final val_accuracy/val_loss and training seconds; DVC metrics) and run.json
(the MLflow run id that the evaluate stage continues).
"""

from __future__ import annotations

import json
import logging

import numpy as np

from pipeline.core import plots, provenance, tracking, training
from pipeline.core.backend import keras, tf
from pipeline.core.cli import run
from pipeline.core.data import atomic_write, file_md5, split_md5, write_json
from pipeline.core.layout import (
    CURVES_FILE,
    FEEDBACK_DIR,
    FEEDBACK_SUMMARY,
    HISTORY_FILE,
    MODEL_FILE,
    RUN_FILE,
    TRAIN_METRICS_FILE,
    split_file,
)
from pipeline.core.params import load_params
from pipeline.core.tags import FEEDBACK_MD5_TAG

log = logging.getLogger(__name__)


def main() -> None:
    params = load_params()
    training.set_threads(params.train.threads)
    experiment_id = tracking.connect(params.tracking.experiment)  # fail before training
    prepared = training.prepare(params)
    md5 = split_md5("train", "val", "test")
    tags = {
        **provenance.git_tags(),
        **provenance.dvc_tags(),
        **{f"data.{s}.md5": h for s, h in md5.items()},
        **_feedback_tag(prepared.feedback),
        "device": _device(),
    }

    with tracking.active_run(
        experiment_id=experiment_id,
        run_name=provenance.run_name(),
        tags=tags,
        system_metrics=params.tracking.system_metrics,
    ) as run_id:
        tracking.log_params(params.flat())
        inputs = {"train": (prepared.train, "training"), "val": (prepared.val, "validation")}
        for split, ((x, y), context) in inputs.items():  # the UI's Dataset column
            tracking.log_dataset(
                x, y, name=f"mnist-{split}", source=split_file(split), digest=md5[split],
                context=context,
            )  # fmt: skip
        if len(prepared.feedback[1]):  # labelled production images, DVC's hash as digest
            source = split_file("train", FEEDBACK_DIR)
            tracking.log_dataset(*prepared.feedback, name="feedback-train", source=source,
                                 digest=file_md5(source), context="training")  # fmt: skip
        tracking.log_metrics(_feedback_counts())
        tracking.log_text(_summary(prepared.model), "model_summary.txt")
        log.info(
            "training on %d images (%d steps/epoch), run %s",
            len(prepared.train[0]), prepared.steps_per_epoch, run_id,
        )  # fmt: skip
        trained = prepared.fit([tracking.epoch_logger()])
        tracking.log_metrics(trained.run_metrics())

        plots.save(plots.learning_curves(trained.history), CURVES_FILE)
        tracking.log_artifact(CURVES_FILE)
        tracking.log_model(prepared.model, prepared.train[0][:5])
        # Outputs last, each atomically: a failure above leaves no model that looks trained.
        atomic_write(MODEL_FILE, lambda tmp: prepared.model.save(tmp), suffix=".keras")
        atomic_write(HISTORY_FILE, lambda tmp: trained.history.to_csv(tmp, index=False))
        write_json(
            TRAIN_METRICS_FILE, {**trained.final(), "train_seconds": round(trained.seconds, 1)}
        )
        write_json(RUN_FILE, {"run_id": run_id, "experiment_id": experiment_id})
    log.info(
        "trained %d epochs in %.1f s; final val_accuracy %.4f",
        len(trained.history), trained.seconds, trained.final()["val_accuracy"],
    )  # fmt: skip


def _feedback_tag(feedback: tuple[np.ndarray, np.ndarray]) -> dict[str, str]:
    """``data.feedback.md5``: the feedback split this run trained on (register ranks the
    runs of one feedback split together); none where there are no labelled images."""
    if not len(feedback[1]):
        return {}
    return {FEEDBACK_MD5_TAG: file_md5(split_file("train", FEEDBACK_DIR))}


def _feedback_counts() -> dict[str, float]:
    """The feedback stage's counts (images taken, labels left out and why) as
    ``feedback.*`` metrics; none where that stage has not run."""
    try:
        summary = json.loads(FEEDBACK_SUMMARY.read_text())
    except FileNotFoundError:
        return {}
    return {f"feedback.{k}": v for k, v in summary.items() if isinstance(v, int)}


def _summary(model: keras.Model) -> str:
    lines: list[str] = []
    model.summary(print_fn=lambda line, **_: lines.append(line))
    return "\n".join(lines) + "\n"


def _device() -> str:
    gpus = tf.config.list_physical_devices("GPU")
    return gpus[0].name if gpus else "CPU"


if __name__ == "__main__":
    run(main)
