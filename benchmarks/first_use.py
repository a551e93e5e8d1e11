"""A new project's first use in parallel, round after round (issue 29; RELIABILITY.md).

    python -m benchmarks.first_use                  # 20 rounds of each part (~20 min, 2 cores)
    python -m benchmarks.first_use --rounds 3 --only store

Three parts, each round in a project that has no ``mlflow.db`` (nor ``optuna.db``) yet:

- ``store``: 4 processes released together by a barrier open the new store and record one
  run each (pipeline/testing/first_use.py, as tests/test_first_use.py does);
- ``queue``: ``dvc exp run --queue -S 'train.seed=1,2'`` then ``dvc queue start -j 2`` on
  the smoke recipe (2,000 images, 1 epoch), both train stages creating the store at once;
- ``tune``: ``python -m pipeline.tune --workers 2`` with 2 one-epoch trials, both workers
  creating ``mlflow.db`` and ``optuna.db`` at once.

Printed per part: rounds, failed processes (or experiments, or trials) and lost runs,
i.e. experiments or trials that ended without their MLflow run FINISHED. MNIST comes from
MNIST_MIRROR, else ../shared/mnist.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import optuna

from benchmarks.train_speed import machine_class
from pipeline.testing.first_use import race
from pipeline.testing.project import (
    SHARED_MNIST,
    SMOKE,
    clone_of,
    copy_project,
    run,
    set_params,
    stage_env,
)

log = logging.getLogger("benchmarks.first_use")
SMOKE_1 = {**SMOKE, "train__epochs": 1}


def template(base: Path, env: dict[str, str]) -> Path:
    """The project on the smoke recipe, data prepared, no store yet."""
    project = copy_project(base / "template")
    set_params(project, **SMOKE_1)
    run(["git", "commit", "-qam", "smoke params"], project)
    run(["dvc", "repro", "preprocess"], project, env)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "prepared"], project, check=False)  # (may be unchanged)
    assert not (project / "mlflow.db").exists()
    return project


def finished_runs(project: Path, tag: str) -> list[str]:
    """Values of ``tag`` on the FINISHED runs of the project's store."""
    db = project / "mlflow.db"
    if not db.exists():
        return []
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name("lenet5-mnist")
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'")
    return [r.data.tags[tag] for r in runs if tag in r.data.tags]


def queue_round(project: Path, env: dict[str, str]) -> tuple[int, int]:
    """(failed experiments, lost runs) of a 2-experiment grid run by 2 queue workers."""
    run(["dvc", "exp", "run", "--queue", "-S", "train.seed=1,2"], project, env)
    subprocess.run(
        ["dvc", "queue", "start", "-j", "2"], cwd=project, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120, check=True,
    )  # fmt: skip
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], project, env).stdout
        if " Queued" not in status and " Running" not in status:
            break
        time.sleep(2)
    run(["dvc", "queue", "stop", "--kill"], project, env, check=False)
    success = status.count("Success")
    recorded = set(finished_runs(project, "dvc.exp_name"))  # FINISHED runs, one per exp
    return 2 - success, max(0, success - len(recorded))


def tune_round(project: Path, env: dict[str, str]) -> tuple[int, int]:
    """(failed or missing trials, lost runs) of `pipeline.tune --workers 2`, 2 trials."""
    set_params(
        project, tune__study="first-use", tune__n_trials=2, tune__epochs=1,
        tune__pruner="none", tune__sampler="random",
    )  # fmt: skip
    proc = run([sys.executable, "-m", "pipeline.tune", "--workers", "2"], project, env, False)
    if proc.returncode != 0:
        log.warning("tune exited %d: %s", proc.returncode, proc.stderr.strip()[-300:])
    try:
        trials = optuna.load_study(
            study_name="first-use", storage=f"sqlite:///{project / 'optuna.db'}"
        ).get_trials()
    except Exception:  # no study at all: every trial failed
        trials = []
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    run_ids = set(finished_runs(project, "optuna.trial"))
    lost = sum(1 for t in complete if str(t.number) not in run_ids)
    return 2 - len(complete), lost


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--only", choices=("store", "queue", "tune"), action="append")
    args = parser.parse_args()
    parts = args.only or ["store", "queue", "tune"]
    mirror = os.environ.get("MNIST_MIRROR", str(SHARED_MNIST))
    env = stage_env(MNIST_MIRROR=mirror)
    cls = machine_class()
    print(f"# first use in parallel: {cls['label']}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="first-use-") as tmp:
        base = Path(tmp)
        results = {}
        if "store" in parts:
            rounds = race(base / "store", processes=4, rounds=args.rounds)
            results["store (4 processes)"] = (
                sum(len(r.failed) for r in rounds),
                sum(4 - r.runs for r in rounds),
            )
        proto = template(base, env) if {"queue", "tune"} & set(parts) else None
        for part, one in (("queue", queue_round), ("tune", tune_round)):
            if part not in parts:
                continue
            failed = lost = 0
            for i in range(args.rounds):
                project = clone_of(proto, base / f"{part}-{i:02d}")
                start = time.perf_counter()
                f, lo = one(project, env)
                failed, lost = failed + f, lost + lo
                log.info("%s round %d: %d failed, %d lost (%.0f s)", part, i + 1, f, lo,
                         time.perf_counter() - start)  # fmt: skip
                shutil.rmtree(project, ignore_errors=True)
            label = "dvc queue start -j 2" if part == "queue" else "pipeline.tune --workers 2"
            results[label] = (failed, lost)
    print("| part | rounds | failed | lost runs |\n| --- | --- | --- | --- |")
    for part, (failed, lost) in results.items():
        print(f"| {part} | {args.rounds} | {failed} | {lost} |")


if __name__ == "__main__":
    main()
