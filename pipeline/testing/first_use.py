"""A new project's first use by several processes at once: each opens the local MLflow
store at the same moment (a barrier) and records one run, round after round, each round
in a new folder with no ``mlflow.db`` yet (``tests/test_first_use.py``,
``python -m benchmarks.first_use``)."""

from __future__ import annotations

import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path

EXPERIMENT = "first-use"


@dataclass(frozen=True)
class Round:
    folder: Path
    failed: list[str]  # one line per process that failed
    runs: int  # runs found in the store afterwards


def _open_and_record(folders: list[Path], barrier, results, worker: int) -> None:
    """One process: in each folder, wait for the others, then open the store and record a
    run (as every stage does: ``tracking.connect``, then a run with a metric)."""
    from pipeline.core import tracking
    from pipeline.core.errors import first_line

    for folder in folders:
        barrier.wait(timeout=300)
        os.chdir(folder)
        os.environ.pop("MLFLOW_TRACKING_URI", None)  # mlflow.set_tracking_uri exports it
        try:
            exp = tracking.connect(EXPERIMENT)
            run_id = tracking.create_run(exp, f"worker-{worker}", {"worker": str(worker)})
            tracking.terminate(run_id, "FINISHED")
            results.put((str(folder), worker, None))
        except Exception as e:  # every failure counts, whatever raised it
            results.put((str(folder), worker, f"{type(e).__name__}: {first_line(e)}"))


def race(base: Path, processes: int = 4, rounds: int = 20) -> list[Round]:
    """``rounds`` new stores in ``base``, each opened by ``processes`` at the same moment."""
    folders = [base / f"round-{i:02d}" for i in range(rounds)]
    for folder in folders:
        folder.mkdir(parents=True)
    ctx = mp.get_context("spawn")  # fresh interpreters, as separate stages would be
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    env = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("MLFLOW_")}
    try:
        procs = [
            ctx.Process(target=_open_and_record, args=(folders, barrier, results, w))
            for w in range(processes)
        ]
        for p in procs:
            p.start()
        outcomes = [results.get(timeout=600) for _ in range(processes * rounds)]
        for p in procs:
            p.join(timeout=60)
    finally:
        os.environ.update(env)
    out = []
    for folder in folders:
        failed = [err for f, _, err in outcomes if f == str(folder) and err]
        out.append(Round(folder, failed, _runs(folder / "mlflow.db")))
    return out


def _runs(db: Path) -> int:
    """Runs of the experiment in a store, read with sqlite3 (MLflow's ``runs`` table)."""
    import sqlite3

    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        query = ("SELECT count(*) FROM runs JOIN experiments USING (experiment_id) "
                 "WHERE experiments.name = ? AND runs.status = 'FINISHED'")  # fmt: skip
        return conn.execute(query, (EXPERIMENT,)).fetchone()[0]
