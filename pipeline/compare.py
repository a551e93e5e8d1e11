"""``python -m pipeline.compare``: finished runs side by side, ranked as register ranks them.

Columns: run name, DVC experiment, key params, the final and best val_accuracy, val_loss,
test metrics, duration,
and a star on the run whose model is the current champion. ``--format md|csv`` for
reports; ``--all`` also lists failed, killed and unfinished runs.
"""

from __future__ import annotations

import argparse
import logging
import sys

import pandas as pd

from pipeline.core import tracking
from pipeline.core.cli import run
from pipeline.core.params import load_params

log = logging.getLogger(__name__)

PARAMS = [
    "model.activation",
    "model.padding",
    "train.optimizer",
    "train.learning_rate",
    "train.lr_schedule",
    "train.batch_size",
    "train.epochs",
    "train.max_samples",
]
METRICS = ["val_accuracy", "val_loss", "best_val_accuracy", "test_accuracy", "test_loss"]


def comparison_table(
    runs: pd.DataFrame, champion_run_id: str | None, metric: str = "val_accuracy"
) -> pd.DataFrame:
    """One row per run from ``mlflow.search_runs`` output, best ``metric`` first (then its
    loss), as register ranks them."""

    def column(name: str) -> pd.Series:
        return runs[name] if name in runs else pd.Series([None] * len(runs), index=runs.index)

    table = pd.DataFrame(
        {
            "champion": (runs["run_id"] == champion_run_id).map({True: "*", False: ""}),
            "run": column("tags.mlflow.runName"),
            "dvc_exp": column("tags.dvc.exp_name").fillna(""),
            "status": runs["status"],
            **{p.split(".", 1)[1]: column(f"params.{p}") for p in PARAMS},
            **{m: column(f"metrics.{m}").astype(float).round(4) for m in METRICS},
            "minutes": ((runs["end_time"] - runs["start_time"]).dt.total_seconds() / 60).round(1),
            "run_id": runs["run_id"],
        }
    )
    return table.sort_values(
        [metric, metric.replace("accuracy", "loss")],
        ascending=[False, True],
        na_position="last",
        kind="stable",
    ).reset_index(drop=True)


def render(table: pd.DataFrame, fmt: str) -> str:
    if fmt == "csv":
        return table.to_csv(index=False)
    if fmt == "md":
        return table.to_markdown(index=False) + "\n"
    return table.to_string(index=False) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.compare", description=__doc__)
    parser.add_argument("--format", choices=["table", "md", "csv"], default="table")
    parser.add_argument("--all", action="store_true", help="include unfinished runs")
    parser.add_argument("--limit", type=int, default=50, help="at most this many rows")
    args = parser.parse_args(argv)
    params = load_params()
    experiment_id = tracking.connect(params.tracking.experiment)
    runs = tracking.all_runs(experiment_id) if args.all else tracking.finished_runs(experiment_id)
    if runs.empty:
        log.info("no runs yet in experiment %s", params.tracking.experiment)
        return
    champion = tracking.alias_target(params.register.model_name, params.register.alias)
    champion_id = champion.run_id if champion else None
    table = comparison_table(runs, champion_id, params.register.metric).head(args.limit)
    sys.stdout.write(render(table, args.format))


if __name__ == "__main__":
    run(main)
