"""Sweep benchmark: 1 vs 2 workers, pruner on vs off, on the full data set.

    python -m benchmarks.sweep                        # 4 configs x 20 trials (~30-40 min)
    python -m benchmarks.sweep --trials 10 --configs w1-median,w1-none
    python -m benchmarks.sweep --out sweep.json       # figures as JSON too

Each config runs ``python -m pipeline.tune --workers N`` on a fresh study (its own SQLite
``optuna.db``) in a temporary copy of the project: ``--trials`` trials of 6 epochs, the
adam/relu space around the ``fast`` recipe of benchmarks/recipes.yaml. Reported per
config: wall time, trial-epochs spent, trials pruned, best validation accuracy; then the
best trial's printed ``dvc exp run`` command is run as a normal pipeline run and its test
accuracy reported (validation accuracy re-checked: it must equal the trial's exactly).

Needs MNIST_MIRROR (or network access) for the copy's download stage.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPES = Path(__file__).with_name("recipes.yaml")
CONFIGS = {  # name: (workers, pruner, tune.pruner_warmup_epochs)
    "w1-median": (1, "median", 1),
    "w2-median": (2, "median", 1),
    "w1-none": (1, "none", 1),
    "w2-none": (2, "none", 1),
    "w1-median-warmup2": (1, "median", 2),  # a less eager pruner: never before epoch 2
}
# Around `fast` (adam, relu, lr 0.002, cosine): the rate over a decade, schedule, batch.
SPACE = {
    "train.learning_rate": {"low": 0.0005, "high": 0.005, "log": True},
    "train.lr_schedule": {"choices": ["constant", "cosine"]},
    "train.batch_size": {"choices": [64, 128, 256]},
}


def sweep(
    project: Path, name: str, workers: int, pruner: str, trials: int, warmup: int = 1
) -> dict:
    """One study; its figures from Optuna's storage and the command's own output."""
    import optuna

    from pipeline.testing.project import set_params

    set_params(
        project,
        tune__study=name,
        tune__pruner=pruner,
        tune__n_trials=trials,
        tune__pruner_warmup_epochs=warmup,
    )
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.tune", "--workers", str(workers)],
        cwd=project,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{name}: pipeline.tune exited {proc.returncode}\n{proc.stderr[-3000:]}")
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{project / 'optuna.db'}")
    ended = study.get_trials()
    return {
        "config": name,
        "workers": workers,
        "pruner": pruner,
        "trials": len(ended),
        "pruned": sum(t.state.name == "PRUNED" for t in ended),
        "wall_s": round(wall, 1),
        "trial_epochs": sum(len(t.intermediate_values) for t in ended),
        "best_trial": study.best_trial.number,
        "best_val_accuracy": study.best_value,
        "best_params": study.best_trial.params,
        "command": proc.stdout.strip(),
    }


def pipeline_run(project: Path, row: dict) -> dict:
    """Run the printed command; the pipeline run's test and val accuracy."""
    import mlflow

    start = time.perf_counter()
    subprocess.run(shlex.split(row["command"]), cwd=project, check=True, capture_output=True)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("lenet5-mnist").experiment_id
    name = shlex.split(row["command"])[4]
    [run] = client.search_runs([exp], filter_string=f"tags.`dvc.exp_name` = '{name}'")
    return {
        "run_s": round(time.perf_counter() - start, 1),
        "run_val_accuracy": run.data.metrics["val_accuracy"],
        "run_test_accuracy": run.data.metrics["test_accuracy"],
        "reproduced": run.data.metrics["val_accuracy"] == row["best_val_accuracy"],
    }


def table(rows: list[dict]) -> str:
    head = (
        "| config | workers | pruner | trials (pruned) | wall | trial-epochs | best val_accuracy"
        " | its pipeline run: test_accuracy (val reproduced?) |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- |\n"
    )
    lines = []
    for r in rows:
        test = (
            f"{r['run_test_accuracy']:.2%} ({'yes' if r['reproduced'] else 'NO'})"
            if "run_test_accuracy" in r
            else "not run"
        )
        lines.append(
            f"| {r['config']} | {r['workers']} | {r['pruner']} | {r['trials']} ({r['pruned']}) "
            f"| {r['wall_s'] / 60:.1f} min | {r['trial_epochs']} | {r['best_val_accuracy']:.2%} "
            f"| {test} |"
        )
    return head + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated")
    parser.add_argument("--no-pipeline-runs", action="store_true")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    from pipeline.testing.project import copy_project, set_params

    fast = yaml.safe_load(RECIPES.read_text())["fast"]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as tmp:
        project = copy_project(Path(tmp))
        overrides = {k.replace(".", "__"): v for k, v in fast.items() if k != "train.epochs"}
        set_params(project, **overrides, tune__epochs=args.epochs, tune__space=SPACE)
        # dvc and the stages' python: this venv's
        os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
        subprocess.run(["dvc", "repro", "preprocess"], cwd=project, check=True)
        for name in args.configs.split(","):
            workers, pruner, warmup = CONFIGS[name]
            rows.append(sweep(project, name, workers, pruner, args.trials, warmup))
            print(json.dumps(rows[-1]), flush=True)
            if args.out:
                args.out.write_text(json.dumps(rows, indent=2))
        if not args.no_pipeline_runs:
            for row in rows:
                row.update(pipeline_run(project, row))
                print(json.dumps(row), flush=True)
                if args.out:
                    args.out.write_text(json.dumps(rows, indent=2))
    print(table(rows))


if __name__ == "__main__":
    main()
