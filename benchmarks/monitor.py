"""How well pipeline.monitor sees what the served model meets (issue 31; BENCHMARKS.md).

    python -m benchmarks.monitor                  # ~8 min on 2 cores
    python -m benchmarks.monitor --clean-windows 10

In a temporary copy of the project a champion is trained with benchmarks/recipes.yaml's
``fast`` recipe (99 % test accuracy) and served by ``python -m pipeline.serve``. Known
traffic is replayed through it in windows of 500 images (requests of 10, 8 at a time),
each window read back by ``python -m pipeline.monitor --last 500``:

- clean test digits, in a seeded random order (``--clean-windows``, up to 20);
- each perturbation of pipeline/core/robustness.py (2 windows each);
- rotations by ±10° to ±40° (2 windows each);
- Fashion-MNIST's test images (Debian's dataset-fashion-mnist: not digits at all).

Printed per kind of traffic: windows, drift detected (share of windows), the estimated
accuracy (ATC) against the true one (mean over the windows), and the error. Then the
seconds of one monitor run over 10,000 logged images (``--last 10000``, windows of 500).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from benchmarks.train_speed import machine_class
from pipeline.core import robustness
from pipeline.testing.load import drive
from pipeline.testing.project import (
    FASHION,
    ROOT,
    SHARED_MNIST,
    copy_project,
    fashion_images,
    run,
    set_params,
    stage_env,
)

WINDOW = 500


def champion(base: Path, env: dict[str, str]) -> Path:
    project = copy_project(base / "project")
    recipe = yaml.safe_load((ROOT / "benchmarks/recipes.yaml").read_text())["fast"]
    set_params(project, **{k.replace(".", "__"): v for k, v in recipe.items()})
    run(["git", "commit", "-qam", "fast recipe"], project)
    run(["dvc", "repro"], project, env, timeout=1800)
    return project


def replay(url: str, x: np.ndarray) -> np.ndarray:
    """Send the images in order (requests of 10, one at a time); the digits answered."""
    bodies = [json.dumps({"inputs": x[i : i + 10].tolist()}).encode() for i in range(0, len(x), 10)]
    load = drive(f"{url}/invocations", lambda i: bodies[i], concurrency=1, requests=len(bodies),
                 keep_body=True)  # fmt: skip
    assert load.errors == 0, f"{load.errors} failed requests"
    return np.concatenate([np.argmax(json.loads(a.body)["predictions"], axis=1)
                           for a in load.answers])  # fmt: skip


def monitor(project: Path, env: dict, *args: str) -> tuple[dict, float]:
    start = time.perf_counter()
    run([sys.executable, "-m", "pipeline.monitor", *args, "--out", "bench-monitor"], project, env)
    seconds = time.perf_counter() - start
    return json.loads((project / "bench-monitor" / "report.json").read_text()), seconds


def traffic_of(x: np.ndarray, y: np.ndarray, clean_windows: int):
    """(kind, images, labels or None) of every window to replay."""
    out = [("clean", x[i * WINDOW : (i + 1) * WINDOW], y[i * WINDOW : (i + 1) * WINDOW])
           for i in range(min(clean_windows, len(x) // WINDOW))]  # fmt: skip
    two = slice(0, 2 * WINDOW)
    halves = (slice(0, WINDOW), slice(WINDOW, 2 * WINDOW))
    sets = dict(robustness.perturbed_sets(x[two], seed=0))
    for degrees in (10, 20, 25, 30, 40):
        sets[f"rotate_{degrees}deg"] = robustness.rotate(
            x[two], robustness.rng_for(0, f"rotate{degrees}"), degrees)  # fmt: skip
    for name, images in sets.items():
        out += [(name, images[h], y[two][h]) for h in halves]
    fashion = fashion_images()
    if fashion is None:
        print(f"(Fashion-MNIST not found under {FASHION}: apt-get install dataset-fashion-mnist)")
    else:
        out += [("fashion_mnist", fashion[h], None) for h in halves]
    return out


def main() -> None:
    from pipeline.testing.project import scoring_service

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clean-windows", type=int, default=20)
    args = parser.parse_args()
    env = stage_env(MNIST_MIRROR=os.environ.get("MNIST_MIRROR", str(SHARED_MNIST)))
    print(f"# monitor benchmark: {machine_class()['label']}, {os.cpu_count()} cores", flush=True)
    results: dict[str, list[tuple[bool, float, float | None]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-monitor-") as tmp:
        project = champion(Path(tmp), env)
        with np.load(project / "data/prepared/test.npz", allow_pickle=False) as z:
            order = np.random.default_rng(0).permutation(len(z["y"]))
            x, y = z["x"][order], z["y"][order]
        server = scoring_service(project, env)
        with server:
            for kind, images, labels in traffic_of(x, y, args.clean_windows):
                digits = replay(server.url, images)
                out, _ = monitor(project, env, "--last", str(WINDOW), "--window", str(WINDOW))
                truth = float((digits == labels).mean()) if labels is not None else None
                results.setdefault(kind, []).append(
                    (out["drift"]["detected"], out["accuracy"]["estimated"], truth))  # fmt: skip
                print(f"  {kind}: drift {out['drift']['detected']} "
                      f"({out['drift']['share']:.2f}), estimated "
                      f"{out['accuracy']['estimated']:.3f}, true {truth}", flush=True)  # fmt: skip
            replay(server.url, x)  # 10,000 clean images more
            _, seconds = monitor(project, env, "--last", "10000", "--window", str(WINDOW))
    print(
        "| traffic | windows | drift detected | estimated accuracy | true accuracy | error (pts) |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for kind, rows in results.items():
        detected = sum(d for d, _, _ in rows) / len(rows)
        est = float(np.mean([e for _, e, _ in rows]))
        truths = [t for _, _, t in rows if t is not None]
        true = float(np.mean(truths)) if truths else None
        err = f"{100 * (est - true):+.1f}" if true is not None else "n/a"
        true_s = f"{100 * true:.1f} %" if true is not None else "n/a (not digits)"
        print(f"| {kind} | {len(rows)} | {100 * detected:.0f} % | {100 * est:.1f} % | {true_s} "
              f"| {err} |")  # fmt: skip
    print(f"\nmonitor over 10,000 logged images (windows of {WINDOW}): {seconds:.1f} s")


if __name__ == "__main__":
    main()
