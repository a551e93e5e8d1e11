"""Stage ``feedback``: the images users labelled become versioned training data.

Reads the prediction log (``PREDICTION_LOG_URL``, else ``serve.log_url``, else
predictions.db) for the labels sent up to ``feedback.until`` and writes
data/feedback/train.npz and holdout.npz (x, y and each image's id; the holdout is the
production slice register gates on) and summary.json (DVC metrics: what was taken, and
what was left out and why). ``feedback.until: null`` (the default) reads no log: a
project with no service trains on MNIST alone. The same cut-off, log and revocations give
byte-identical files (pipeline.core.feedback says how).
"""

from __future__ import annotations

import datetime
import logging

from pipeline.core import feedback, predlog
from pipeline.core.cli import run
from pipeline.core.data import save_split, write_json
from pipeline.core.errors import PipelineError
from pipeline.core.layout import FEEDBACK_DIR, FEEDBACK_SUMMARY, split_file
from pipeline.core.locks import sqlite_path
from pipeline.core.params import load_params, until_time

log = logging.getLogger(__name__)


def main() -> None:
    params = load_params()
    cfg = params.feedback
    if cfg.until is None:
        dataset = feedback.empty()
    else:
        until = until_time(cfg.until)
        if until > datetime.datetime.now(datetime.UTC):
            raise PipelineError(f"feedback.until: {cfg.until} is in the future: labels sent "
                                "later would change this dataset")  # fmt: skip
        engine = _open_log(predlog.log_url(params.serve.log_url))
        try:
            revoked = predlog.revoked_senders(engine)
            dataset = feedback.build(predlog.read_labels(engine, until), revoked, cfg.holdout)
        finally:
            engine.dispose()
    for name in ("train", "holdout"):  # each atomically: a killed stage leaves no half file
        split = getattr(dataset, name)
        save_split(split_file(name, FEEDBACK_DIR), split.x, split.y, ids=split.ids)
    write_json(FEEDBACK_SUMMARY, {"until": cfg.until, **dataset.counts})
    c = dataset.counts
    log.info(
        "feedback up to %s: %d labelled images (%d train, %d holdout) from %d labels; left "
        "out: %d labels of revoked keys, %d without a sender, %d images whose senders "
        "disagree, %d without pixels",
        cfg.until, c["images"], c["train_images"], c["holdout_images"], c["labels"],
        c["revoked_labels"], c["unattributed_labels"], c["disagreeing_images"],
        c["no_pixels_images"],
    )  # fmt: skip


def _open_log(url: str):
    """The log, which must exist: this stage reads it, never makes an empty one."""
    db = sqlite_path(url)
    if db is not None and not db.exists():
        raise PipelineError(f"no prediction log at {db}: serve and label first, or set "
                            "feedback.until to null")  # fmt: skip
    return predlog.open_engine(url)


if __name__ == "__main__":
    run(main)
