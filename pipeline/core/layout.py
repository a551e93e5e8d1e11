"""The data layout: every file a stage writes and another reads, named once.

dvc.yaml declares the same paths. Where each lives:

- **git** (small text, ``cache: false``): metrics, plot data and the small JSON files, so
  every commit and every DVC experiment carries its own (``dvc exp show``,
  ``dvc metrics diff``, ``dvc plots diff``, ``dvc exp apply``).
- **DVC cache** (binary, pushed to a DVC remote): raw and prepared data, the model, the
  PNG plots.
- **neither** (git-ignored, at the main workspace's root): the local MLflow and Optuna
  stores, shared by the workspace and every DVC experiment's temporary copy; and
  register's receipt of the store it registered in (``STORE_FILE``), which is what makes
  register run again wherever the store is not the one that receipt names.
"""

from __future__ import annotations

from pathlib import Path

DATA = Path("data")

# download
RAW_DIR = DATA / "raw"  # the four MNIST .gz files (DVC cache)

# preprocess
PREPARED_DIR = DATA / "prepared"  # {train,val,test}.npz (DVC cache)
SUMMARY_FILE = PREPARED_DIR / "summary.json"  # class counts per split (git)
SAMPLES_FILE = PREPARED_DIR / "samples.png"  # ten digits per class (DVC cache)

# feedback: the labelled images of the prediction log (DVC cache; summary in git)
FEEDBACK_DIR = DATA / "feedback"  # {train,holdout}.npz: x, y and ids ("request_id:index")
FEEDBACK_SUMMARY = FEEDBACK_DIR / "summary.json"  # what was taken and left out, and why (git)

# train
TRAIN_DIR = DATA / "train"
MODEL_FILE = TRAIN_DIR / "model.keras"  # (DVC cache)
RUN_FILE = TRAIN_DIR / "run.json"  # the MLflow run (and experiment) evaluate continues (git)
TRAIN_METRICS_FILE = TRAIN_DIR / "metrics.json"  # final val metrics, train seconds (git)
HISTORY_FILE = TRAIN_DIR / "history.csv"  # one row per epoch (git)
CURVES_FILE = TRAIN_DIR / "learning_curves.png"  # (DVC cache)

# evaluate
EVAL_DIR = DATA / "eval"
EVAL_METRICS_FILE = EVAL_DIR / "metrics.json"  # test metrics, 95 % interval, robust.* (git)
PER_CLASS_FILE = EVAL_DIR / "per_class.csv"  # (git)
PREDICTIONS_FILE = EVAL_DIR / "predictions.csv"  # actual, predicted (git)
CONFUSION_FILE = EVAL_DIR / "confusion.png"  # (DVC cache)
MISCLASSIFIED_FILE = EVAL_DIR / "misclassified.png"  # (DVC cache)

# register
CHAMPION_FILE = DATA / "register" / "champion.json"  # (git)
CARD_FILE = DATA / "register" / "card.md"  # the champion's model card (git)
# Which store this workspace's champion was registered in (git-ignored, never cached): a
# fresh clone or a `dvc pull` lacks it, so DVC reruns register for the store at hand.
STORE_FILE = DATA / "register" / "store.json"

# python -m pipeline.tune (not a stage: git-ignored, see data/README.md)
TUNE_BEST_FILE = DATA / "tune" / "best.yaml"

# Local stores at the main workspace's root (git-ignored)
MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"
OPTUNA_DB = "optuna.db"
PREDICTIONS_DB = "predictions.db"  # python -m pipeline.serve's prediction log (SQLite default)
SERVE_SPOOL = ".serve-spool"  # its rows on local disk before the answer (serve.spool_dir default)

_EXPS_TMP = (".dvc", "tmp", "exps")  # where `dvc exp run --temp` and queues copy the repo


def split_file(name: str, directory: Path = PREPARED_DIR) -> Path:
    """``data/prepared/<name>.npz`` for a split ``train``, ``val`` or ``test``."""
    return directory / f"{name}.npz"


def project_root(start: Path | None = None) -> Path:
    """The main workspace: the cwd, or the repo that owns a DVC temp copy under .dvc/tmp/exps."""
    here = (start or Path.cwd()).resolve()
    parts = here.parts
    for i in range(len(parts) - len(_EXPS_TMP)):
        if parts[i : i + len(_EXPS_TMP)] == _EXPS_TMP:
            return Path(*parts[:i])
    return here
