"""Where a stage's seconds go before (and after) it learns anything: the smoke repro.

    python -m benchmarks.stage_overhead            # ~2-3 min on 2 cores
    python -m benchmarks.stage_overhead --profile  # plus a cProfile table per stage
    python -m benchmarks.stage_overhead --waits    # plus what a user waits for (~8 min)

In a temporary copy of the project (MNIST from MNIST_MIRROR, else ../shared/mnist), after
download and preprocess: `dvc repro` of train -> evaluate -> register on the smoke recipe
(2,000 training images, 1 epoch), each stage's wall seconds taken from when DVC starts
it, twice: the first repro creates the MLflow store (SQLite tables and MLflow's schema
migrations, once per project), the second follows a change of ``train.seed``, as every
later experiment does. Then three no-op `dvc repro`s, and each stage's own process again,
alone, split into interpreter start + imports (``-X importtime``, top-level packages), the
training epochs (``train_seconds``) and the rest. ``--profile`` runs each stage once more
under cProfile and prints the project functions and imports that take the longest
(profiled seconds run slower than plain ones; read them as shares). ``--waits`` then
times, in the same copy, what a user waits for: `dvc repro` of train -> register on
params.yaml's reference recipe (all 55,000 training images, 30 epochs; download and
preprocess already done) and one `dvc exp run` of benchmarks/recipes.yaml's ``fast``
recipe.

Every figure names the CPU class, the cores and the load average it was taken under.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.train_speed import cpu_flags, machine_class
from pipeline.testing.project import (
    ROOT,
    SHARED_MNIST,
    SMOKE,
    copy_project,
    set_params,
    stage_env,
)

STAGES = ("train", "evaluate", "register")
ONE_EPOCH_SMOKE = {**SMOKE, "train__epochs": 1}  # the tests' slice; issue 19's single epoch
NOOP_RUNS = 3  # one figure is within noise of the 1 s target: each run is printed
PACKAGES = ("tensorflow", "keras", "mlflow", "matplotlib", "pandas", "scipy", "optuna")


def repro_by_stage(project: Path, env: dict[str, str]) -> tuple[float, dict[str, float]]:
    """(total wall seconds, {stage: seconds}) of one `dvc repro`, split where DVC prints
    "Running stage 'name'" (each stage's figure includes DVC's own work after it)."""
    start = time.perf_counter()
    marks: list[tuple[str, float]] = []
    with subprocess.Popen(
        ["dvc", "repro"], cwd=project, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    ) as proc:  # fmt: skip
        for line in proc.stdout:
            found = re.search(r"Running stage '([\w-]+)'", line)
            if found:
                marks.append((found.group(1), time.perf_counter()))
    total = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"dvc repro exited {proc.returncode}")
    ends = [t for _, t in marks[1:]] + [start + total]
    return total, {name: t1 - t0 for (name, t0), t1 in zip(marks, ends, strict=True)}


def noop_repro(project: Path, env: dict[str, str]) -> float:
    """Wall seconds of one `dvc repro` that finds everything up to date."""
    start = time.perf_counter()
    noop = subprocess.run(["dvc", "repro"], cwd=project, env=env, capture_output=True,
                          text=True, check=True)  # fmt: skip
    seconds = time.perf_counter() - start
    assert "up to date" in noop.stdout + noop.stderr, noop.stdout
    return seconds


def import_seconds(stderr: str) -> dict[str, float]:
    """Import seconds from ``-X importtime`` output: each package of PACKAGES (its own
    line, cumulative, where it was first imported) and 'all' (every top-level import, the
    interpreter's own too)."""
    out: dict[str, float] = {"all": 0.0}
    for line in stderr.splitlines():
        found = re.match(r"import time:\s+\d+ \|\s+(\d+) \| ( *)(\S+)", line)
        if not found:
            continue
        seconds, name = int(found.group(1)) / 1e6, found.group(3)
        if not found.group(2):  # nested imports are inside their parent's figure
            out["all"] += seconds
        if name in PACKAGES:  # the package's own line, wherever it was first imported
            out[name] = out.get(name, 0.0) + seconds
    return out


def stage_alone(project: Path, env: dict[str, str], stage: str) -> dict[str, float]:
    """One stage's process alone: wall seconds, import seconds, training seconds."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", f"pipeline.{stage}"],
        cwd=project, env=env, capture_output=True, text=True,
    )  # fmt: skip
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{stage} exited {proc.returncode}: {proc.stderr[-2000:]}")
    imports = import_seconds(proc.stderr)
    fit = 0.0
    if stage == "train":
        fit = json.loads((project / "data/train/metrics.json").read_text())["train_seconds"]
    return {"wall": wall, "imports": imports, "fit": fit}


def profile(project: Path, env: dict[str, str], stage: str, top: int) -> list[tuple[str, float]]:
    """The ``top`` project functions and top-level imports by cumulative profiled seconds."""
    out = project / f"{stage}.prof"
    subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", str(out), "-m", f"pipeline.{stage}"],
        cwd=project, env=env, check=True, capture_output=True,
    )  # fmt: skip
    stats = pstats.Stats(str(out)).stats  # {(file, line, func): (cc, nc, tt, ct, callers)}
    rows = []
    for (file, _, func), (_, _, _, cumulative, _) in stats.items():
        if "/pipeline/" in file and "/site-packages/" not in file and func != "<module>":
            rows.append((f"{Path(file).stem}.{func}", cumulative))
    return sorted(rows, key=lambda r: -r[1])[:top]


def waits(project: Path, env: dict[str, str]) -> dict[str, float]:
    """Wall seconds of the reference `dvc repro` and of the fast recipe's `dvc exp run`."""
    (project / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    out = {}
    start = time.perf_counter()
    subprocess.run(["dvc", "repro"], cwd=project, env=env, check=True, capture_output=True)
    out["`dvc repro`, reference recipe (30 epochs, 55,000 images)"] = time.perf_counter() - start
    fast = yaml.safe_load((ROOT / "benchmarks/recipes.yaml").read_text())["fast"]
    sets = [arg for k, v in fast.items() for arg in ("-S", f"{k}={v}")]
    start = time.perf_counter()
    subprocess.run(["dvc", "exp", "run", "-n", "fast", *sets], cwd=project, env=env,
                   check=True, capture_output=True)  # fmt: skip
    out[f"`dvc exp run` of the fast recipe ({fast['train.epochs']} epochs)"] = (
        time.perf_counter() - start
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stage_overhead")
    parser.add_argument("--profile", action="store_true", help="also profile each stage")
    parser.add_argument("--top", type=int, default=12, help="rows per stage profile")
    parser.add_argument("--waits", action="store_true", help="also the full-data waits")
    args = parser.parse_args()
    mirror = os.environ.get("MNIST_MIRROR", str(SHARED_MNIST))
    env = stage_env(MNIST_MIRROR=mirror)
    cls = machine_class(cpu_flags())
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="stage-overhead-") as tmp:
        project = copy_project(Path(tmp))
        set_params(project, **ONE_EPOCH_SMOKE)
        subprocess.run(["dvc", "repro", "preprocess"], cwd=project, env=env, check=True,
                       capture_output=True)  # fmt: skip
        total, by_stage = repro_by_stage(project, env)  # the first: creates the MLflow store
        # What every later experiment pays: a param of train changed, the store exists.
        seed = yaml.safe_load((project / "params.yaml").read_text())["train"]["seed"]
        set_params(project, train__seed=seed + 1)
        again_total, again = repro_by_stage(project, env)
        noop_s = [noop_repro(project, env) for _ in range(NOOP_RUNS)]
        alone = {stage: stage_alone(project, env, stage) for stage in STAGES}
        profiles = (
            {stage: profile(project, env, stage, args.top) for stage in STAGES}
            if args.profile else {}
        )  # fmt: skip
        waited = waits(project, env) if args.waits else {}

    print(
        f"CPU: {cls['label']}, {os.cpu_count()} cores; load average before "
        f"{load[0]:.2f}, after {os.getloadavg()[0]:.2f}; {time.strftime('%Y-%m-%d')}"
    )
    for what, seconds, stages in (
        ("the first, which creates the MLflow store", total, by_stage),
        ("again after `train.seed` changed (every later experiment)", again_total, again),
    ):
        print(
            f"\nsmoke `dvc repro` (2,000 images, 1 epoch), {what}: "
            f"{' + '.join(f'{s} {stages.get(s, 0):.1f}' for s in STAGES)} = "
            f"{sum(stages.get(s, 0) for s in STAGES):.1f} s (whole command {seconds:.1f} s)"
        )
    print(f"no-op `dvc repro`: {' / '.join(f'{t:.2f}' for t in noop_s)} s ({NOOP_RUNS} runs)\n")
    cols = ["tensorflow", "keras", "mlflow", "matplotlib", "pandas", "scipy"]
    print(
        "| stage | in dvc repro s | alone s | imports s | "
        + " | ".join(cols)
        + " | training s | rest s |"
    )
    print("|---" * (6 + len(cols)) + "|")
    for stage in STAGES:
        a = alone[stage]
        rest = a["wall"] - a["imports"]["all"] - a["fit"]
        print(
            f"| {stage} | {by_stage.get(stage, float('nan')):.1f} | {a['wall']:.1f} | "
            f"{a['imports']['all']:.1f} | "
            + " | ".join(f"{a['imports'].get(c, 0):.1f}" for c in cols)
            + f" | {a['fit']:.1f} | {rest:.1f} |"
        )
    print(
        "\n(import columns are cumulative and overlap: keras and TensorFlow import each "
        "other, so TensorFlow's figure is the first of them to be imported)"
    )
    if waited:
        print("\n| what a user waits for | wall s |\n|---|---|")
        print(f"| smoke `dvc repro` (train -> register, 2,000 images, 1 epoch) | {total:.1f} |")
        print(f"| the same after a change of `train.seed` | {again_total:.1f} |")
        for what, seconds in waited.items():
            print(f"| {what} | {seconds:.1f} |")
    for stage, rows in profiles.items():
        print(f"\n{stage} under cProfile (cumulative s):")
        for name, seconds in rows:
            print(f"  {seconds:7.2f}  {name}")


if __name__ == "__main__":
    main()
