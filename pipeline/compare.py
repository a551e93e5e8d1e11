"""``python -m pipeline.compare``: finished runs side by side, ranked as register ranks them.

Columns: run name, DVC experiment, key params, the final and best val_accuracy, val_loss,
test metrics, duration,
and a star on the run whose model is the current champion. ``--format md|csv`` for
reports; ``--all`` also lists failed, killed and unfinished runs.

``--against champion RUN_ID`` runs register's promotion test instead: both models scored
on the same test images, exact McNemar on their disagreements, and what register would
decide (``challenger`` or any other alias works too).
"""

from __future__ import annotations

import argparse
import logging
import sys

import pandas as pd

from pipeline.core import tracking
from pipeline.core.cli import run
from pipeline.core.data import load_split, split_md5
from pipeline.core.errors import PipelineError
from pipeline.core.params import Params, load_params
from pipeline.core.promotion import (
    CANDIDATE_FILTER,
    RANK_COLUMNS,
    decide,
    gate_record,
    order,
    paired,
)

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
    "train.precision",  # float32 | mixed_bfloat16: the minutes differ, the accuracy may
]
METRICS = ["val_accuracy", "val_loss", "best_val_accuracy", "test_accuracy", "test_loss"]


def comparison_table(
    runs: pd.DataFrame, champion_run_id: str | None, metric: str = "val_accuracy"
) -> pd.DataFrame:
    """One row per run from ``mlflow.search_runs`` output, best ``metric`` first (then its
    loss), as register ranks them."""

    def column(name: str) -> pd.Series:
        return runs[name] if name in runs else pd.Series([None] * len(runs), index=runs.index)

    runs = order(runs, metric)
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
    return table.reset_index(drop=True)


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
    parser.add_argument(
        "--against",
        nargs=2,
        metavar=("ALIAS", "RUN_ID"),
        help="test RUN_ID's model against the model at ALIAS (e.g. champion) as register does",
    )
    args = parser.parse_args(argv)
    params = load_params()
    if args.against:
        sys.stdout.write(against(params, *args.against, fmt=args.format))
        return
    experiment_id = tracking.connect(params.tracking.experiment)
    runs = tracking.search_runs(experiment_id, "" if args.all else CANDIDATE_FILTER, RANK_COLUMNS)
    if runs.empty:
        log.info("no runs yet in experiment %s", params.tracking.experiment)
        return
    champion = tracking.alias_target(params.register.model_name, params.register.alias)
    champion_id = champion.run_id if champion else None
    table = comparison_table(runs, champion_id, params.register.metric).head(args.limit)
    sys.stdout.write(render(table, args.format))


def against(params: Params, alias: str, run_id: str, fmt: str = "table") -> str:
    """Register's gate between ``run_id``'s model and ``name@alias``, as a small table and
    the line register would log."""
    cfg = params.register
    tracking.use_store()
    version = tracking.alias_target(cfg.model_name, alias)
    if version is None:
        raise PipelineError(f"no {cfg.model_name}@{alias} yet (run the register stage)")
    model_uri = tracking.logged_model_uri(run_id)
    if model_uri is None:
        raise PipelineError(f"run {run_id}: no such run with a logged model")
    x, y = load_split("test")
    digest = split_md5("test")["test"]
    result = paired(
        y,
        tracking.predicted_labels(
            f"models:/{cfg.model_name}/{version.version}",
            x,
            tracking.LoggedTest(version.run_id, y, digest),
        ),
        tracking.predicted_labels(model_uri, x, tracking.LoggedTest(run_id, y, digest)),
    )
    decision = decide(result, cfg.alpha, cfg.min_gain)
    record = gate_record(result, "test", len(y), cfg.alpha, cfg.min_gain, str(version.version))
    table = pd.DataFrame(
        [
            {"images": f"test ({len(y)})", "champion_only": result.champion_only,
             "candidate_only": result.candidate_only, "gain_pts": record["accuracy_diff_pts"],
             "ci95_pts": record["accuracy_diff_ci95_pts"], "p_value": record["p_value"],
             "decision": {"promoted": "promoted", "kept": "challenger"}[decision.decision]}
        ]
    )  # fmt: skip
    word = "promote" if decision.promote else "keep"
    return render(table, fmt) + (
        f"{run_id} vs {cfg.model_name}@{alias} (v{version.version}): register would "
        f"{word}: {decision.reason}\n"
    )


if __name__ == "__main__":
    run(main)
