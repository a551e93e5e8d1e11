"""``python -m pipeline.tune [--workers N]``: run the sweep in params.yaml's ``tune:``
section (see :mod:`pipeline.tune`); print the best trial as a ``dvc exp run`` command."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from collections.abc import Mapping

import yaml

from pipeline.core.cli import run
from pipeline.core.data import atomic_write, load_split
from pipeline.core.layout import TUNE_BEST_FILE
from pipeline.core.params import Params, load_params
from pipeline.core.training import set_threads
from pipeline.tune.storage import TuneError, storage_url
from pipeline.tune.worker import Worker

log = logging.getLogger(__name__)


def cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def work(params: Params, url: str, threads: int | None, heartbeat_s: int) -> Worker:
    """Run one worker in this process (TensorFlow's threads are set before it runs)."""
    set_threads(threads)
    worker = Worker(params, url, threads, heartbeat_s)
    worker.open()
    worker.work()
    return worker


def write_best(best: Mapping[str, object]) -> None:
    atomic_write(
        TUNE_BEST_FILE, lambda tmp: tmp.write_text(yaml.safe_dump(dict(best), sort_keys=False))
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.tune", description=__doc__)
    parser.add_argument("--workers", type=int, default=1, help="processes on this machine")
    parser.add_argument(
        "--heartbeat", type=int, default=10, help="seconds; a trial is lost after 3 missed"
    )
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)  # set by --workers
    parser.add_argument("--worker-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.workers < 1 or args.heartbeat < 1:
        raise TuneError("--workers and --heartbeat must be >= 1")
    params = load_params()  # a bad tune: section fails here, before any training
    if not params.tune.space:
        raise TuneError("tune.space: nothing to search (add params keys with low/high or choices)")
    url = storage_url()
    threads = args.threads or max(1, cores() // args.workers)
    load_split("val")  # fail in one line if the data is not prepared

    if args.workers == 1 or args.worker_only:
        worker = work(params, url, threads, args.heartbeat)
        log.info("this worker trained %d trial-epochs", worker.trial_epochs)
        if args.worker_only:
            return
    else:
        _spawn(args.workers, threads, args.heartbeat)
        worker = Worker(params, url, threads, args.heartbeat)
        worker.open()
    best = worker.finish()
    if best is None:
        raise TuneError(f"study {params.tune.study}: no trial completed")
    write_best(best)
    log.info(
        "best: trial %d, val_accuracy %.4f (%s)", best["trial"], best["val_accuracy"],
        TUNE_BEST_FILE,
    )  # fmt: skip
    sys.stdout.write(f"{best['command']}\n")


def _spawn(n: int, threads: int, heartbeat_s: int) -> None:
    """Run ``n`` worker processes; wait for all. SIGTERM/Ctrl-C reach each of them."""
    cmd = [sys.executable, "-m", "pipeline.tune", "--worker-only", f"--threads={threads}"]
    cmd.append(f"--heartbeat={heartbeat_s}")
    procs = [subprocess.Popen(cmd) for _ in range(n)]
    log.info("%d workers (%d TensorFlow threads each): pids %s", n, threads, [p.pid for p in procs])
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        raise
    if any(codes):
        raise TuneError(f"workers exited with {codes}")


if __name__ == "__main__":
    run(main)
