"""What MLflow's lineage features cost the train stage, printed as figures.

    python -m benchmarks.tracking_cost [--epochs 4] [--repeats 2]

(a) Dataset inputs: ``tracking.log_dataset`` for train, val and test (the splits as the
    stages log them) into a fresh SQLite store, median of 5.
(b) System metrics (``tracking.system_metrics``): whole training epochs of the compiled
    loop on the 55,000-image split, in runs alternating between MLflow's system-metrics
    monitor on (sampling every 10 s, its default) and off; medians.

Needs the prepared data (``dvc repro preprocess``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_class() -> str:
    """The vector extensions that matter here, from /proc/cpuinfo."""
    try:
        flags = next(
            ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")
        ).split()
    except (OSError, StopIteration):
        return platform.processor() or "unknown"
    return "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "other"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tracking_cost")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run")
    parser.add_argument("--repeats", type=int, default=2, help="runs per setting")
    args = parser.parse_args()

    os.chdir(tempfile.mkdtemp(prefix="tracking-cost-"))  # the store goes here
    import keras
    import mlflow

    from pipeline.core import loop, tracking
    from pipeline.core.data import file_md5, load_split
    from pipeline.core.model import build_lenet5
    from pipeline.core.params import ModelParams

    prepared = ROOT / "data/prepared"
    splits = {s: load_split(s, prepared) for s in ("train", "val", "test")}
    md5 = {s: file_md5(prepared / f"{s}.npz") for s in splits}
    experiment_id = tracking.connect("tracking-cost")

    # (a) dataset inputs
    times = []
    for _ in range(5):
        with tracking.active_run(experiment_id=experiment_id):
            start = time.perf_counter()
            for s, (x, y) in splits.items():
                tracking.log_dataset(
                    x, y, name=f"mnist-{s}", source=prepared / f"{s}.npz", digest=md5[s],
                    context=s,
                )  # fmt: skip
            times.append(time.perf_counter() - start)
    log_s = statistics.median(times)

    # (b) system metrics on/off, alternated epoch by epoch
    keras.utils.set_random_seed(0)
    model = build_lenet5(ModelParams(padding=2))
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=keras.losses.CategoricalCrossentropy())
    trainer = loop.CompiledLoop(model, splits["train"], splits["val"], batch_size=128, seed=0)
    trainer.run_epoch()  # warm-up: tracing
    epoch_s: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.repeats):  # runs alternate; each long enough for MLflow to sample
        for on in (True, False):
            with tracking.active_run(experiment_id=experiment_id, system_metrics=on):
                for _ in range(args.epochs):
                    start = time.perf_counter()
                    trainer.run_epoch()
                    epoch_s[on].append(time.perf_counter() - start)
    on, off = statistics.median(epoch_s[True]), statistics.median(epoch_s[False])
    runs = mlflow.search_runs([experiment_id])
    sampled = [c for c in runs.columns if c.startswith("metrics.system/")]

    print(f"cpu class: {cpu_class()}, cores: {os.cpu_count()}, mlflow {mlflow.__version__}")
    print("| what | figure |")
    print("| --- | --- |")
    print(f"| log train+val+test as dataset inputs | {log_s * 1000:.0f} ms per run |")
    print(
        f"| epoch with system metrics off / on | {off:.2f} s / {on:.2f} s "
        f"({(on - off) / off * 100:+.1f} %, medians of {len(epoch_s[True])} epochs each) |"
    )
    print(f"| system metrics recorded | {', '.join(sorted(sampled)) or 'none'} |")


if __name__ == "__main__":
    main()
