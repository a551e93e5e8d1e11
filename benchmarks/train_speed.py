"""Training speed, pipeline overhead and time-to-accuracy, printed as figures.

    python -m benchmarks.train_speed                 # everything (~15 min on 2 cores)
    python -m benchmarks.train_speed --only speed    # speed | overhead | accuracy
    python -m benchmarks.train_speed --write BENCHMARKS.md

Speed: on the same data in one process, alternates one epoch at a time
  (a) the seed post's bare Keras script (28×28, SGD 0.01, batch 128, model.fit on arrays),
  (b) the pipeline's train stage with the same recipe (train.loop compiled and fit), and
  (c) the same LeNet-5 recipe in PyTorch eager, when torch is installed,
and prints medians over the epochs after a warm-up. Overhead: a cold `dvc repro` split per
stage and a no-op `dvc repro`, in a temporary copy of the project. Time to accuracy: wall
seconds of training until test accuracy first reaches 98.3 % and 99.0 %, per recipe in
benchmarks/recipes.yaml.

Needs the prepared data (data/prepared/*.npz) or MNIST_MIRROR to make it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPES = Path(__file__).with_name("recipes.yaml")
THRESHOLDS = (0.983, 0.990)
MARKER = "<!-- everything below is written by: python -m benchmarks.train_speed --write -->"


# --- data -------------------------------------------------------------------------------


def load_data() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """train/val/test splits, made with `dvc repro preprocess` if they are missing."""
    from pipeline.data import load_split

    prepared = ROOT / "data/prepared"
    if not (prepared / "test.npz").exists():
        subprocess.run(["dvc", "repro", "preprocess"], cwd=ROOT, check=True)
    return {s: load_split(s, prepared) for s in ("train", "val", "test")}


# --- the three trainers -------------------------------------------------------------------


class BareKeras:
    """The seed post's script: Keras Sequential on 28×28, model.fit on NumPy arrays."""

    name = "(a) bare Keras script, 28x28, model.fit"

    def __init__(self, data: dict) -> None:
        import keras
        from keras import layers

        x, y = data["train"]
        self.x = (x.astype("float32") / 255.0)[..., None]
        self.y = keras.utils.to_categorical(y, 10)
        self.model = keras.Sequential(
            [
                keras.Input((28, 28, 1)),
                layers.Conv2D(6, 5, activation="tanh"),
                layers.MaxPooling2D(2),
                layers.Conv2D(16, 5, activation="tanh"),
                layers.MaxPooling2D(2),
                layers.Flatten(),
                layers.Dense(120, activation="tanh"),
                layers.Dense(84, activation="tanh"),
                layers.Dense(10, activation="softmax"),
            ]
        )
        self.model.compile(
            optimizer=keras.optimizers.SGD(0.01),
            loss="categorical_crossentropy",
            metrics=["accuracy"],
        )

    def epoch(self) -> None:
        self.model.fit(self.x, self.y, batch_size=128, epochs=1, verbose=0)


class Pipeline:
    """pipeline.train's own code path with the reference recipe from params.yaml."""

    def __init__(self, data: dict, loop: str, padding: int) -> None:
        from pipeline.params import load_params
        from pipeline.training import compile_model

        params = load_params(ROOT / "params.yaml")
        params = dataclasses.replace(
            params,
            model=dataclasses.replace(params.model, padding=padding),
            train=dataclasses.replace(params.train, loop=loop),
        )
        self.name = f"(b) pipeline train, {28 + 2 * padding}x{28 + 2 * padding}, loop={loop}"
        self.cfg, self.data = params.train, data
        self.model = compile_model(params, steps_per_epoch=430)
        if loop == "compiled":
            from pipeline.loop import CompiledLoop

            self.loop = CompiledLoop(
                self.model,
                data["train"],
                data["val"],
                batch_size=self.cfg.batch_size,
                seed=self.cfg.seed,
            )

    def epoch(self) -> None:
        if self.cfg.loop == "compiled":
            self.loop.run_epoch()
        else:
            from pipeline.training import fit

            fit(
                self.model,
                self.data["train"],
                self.data["val"],
                dataclasses.replace(self.cfg, epochs=1),
                [],
            )


class TorchEager:
    """The same LeNet-5 recipe in PyTorch eager (32×32 via padding, tanh, max-pool, SGD)."""

    name = "(c) PyTorch eager, 32x32"

    def __init__(self, data: dict) -> None:
        import torch
        from torch import nn

        torch.manual_seed(0)
        x, y = data["train"]
        self.torch = torch
        self.x = torch.from_numpy(x.astype("float32") / 255.0)[:, None]
        self.y = torch.from_numpy(y.astype("int64"))
        self.model = nn.Sequential(
            nn.ZeroPad2d(2),
            nn.Conv2d(1, 6, 5),
            nn.Tanh(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.Tanh(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(400, 120),
            nn.Tanh(),
            nn.Linear(120, 84),
            nn.Tanh(),
            nn.Linear(84, 10),
        )
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01)
        self.loss = nn.CrossEntropyLoss()

    def epoch(self) -> None:
        order = self.torch.randperm(len(self.x))
        for i in range(0, len(order), 128):
            idx = order[i : i + 128]
            self.opt.zero_grad()
            self.loss(self.model(self.x[idx]), self.y[idx]).backward()
            self.opt.step()


def bench_speed(data: dict, rounds: int) -> list[dict]:
    """Alternate one epoch per trainer; median seconds per epoch after one warm-up epoch."""
    trainers = [
        BareKeras(data),
        Pipeline(data, "compiled", 2),
        Pipeline(data, "fit", 2),
        Pipeline(data, "compiled", 0),
    ]
    try:
        trainers.append(TorchEager(data))
    except ImportError:
        print("torch is not installed: skipping (c); pip install '.[torch]'")
    times: dict[str, list[float]] = {t.name: [] for t in trainers}
    for r in range(rounds + 1):
        for t in trainers:
            start = time.perf_counter()
            t.epoch()
            if r:  # round 0 is the warm-up (tracing, allocation)
                times[t.name].append(time.perf_counter() - start)
    n = len(data["train"][0])
    base = statistics.median(times[trainers[0].name])
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append(
            {
                "trainer": name,
                "s_per_epoch": round(med, 2),
                "samples_per_s": round(n / med),
                "vs_a": round(base / med, 2),
                "epochs": len(ts),
            }
        )
    return rows


# --- pipeline overhead ----------------------------------------------------------------


def bench_overhead(mirror: str) -> dict:
    """Cold `dvc repro` (1 epoch) in a fresh temp copy: once as one call, once stage by
    stage for the split; then a no-op `dvc repro`."""
    sys.path.insert(0, str(ROOT))
    from tests.conftest import copy_project, set_params

    env = {
        **os.environ,
        "MNIST_MIRROR": mirror,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    env.pop("MLFLOW_TRACKING_URI", None)

    def repro(project: Path, *args: str) -> tuple[float, str]:
        start = time.perf_counter()
        out = subprocess.run(
            ["dvc", "repro", *args],
            cwd=project,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return time.perf_counter() - start, out

    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        whole, split = copy_project(Path(a)), copy_project(Path(b))
        for project in (whole, split):
            set_params(project, train__epochs=1)
        cold, _ = repro(whole)
        fit_s = _train_seconds(whole)
        noop, out = repro(whole)
        assert "up to date" in out, out
        stages = {
            stage: round(repro(split, "--single-item", stage)[0], 2)
            for stage in ("download", "preprocess", "train", "evaluate", "register")
        }
    return {
        "stages_s": stages,
        "cold_total_s": round(cold, 2),
        "fit_s": round(fit_s, 2),
        "outside_fit_s": round(cold - fit_s, 2),
        "noop_repro_s": round(noop, 2),
    }


def _train_seconds(project: Path) -> float:
    import mlflow

    run_id = json.loads((project / "data/train/run.json").read_text())["run_id"]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    return client.get_run(run_id).data.metrics["train_seconds"]


# --- time to accuracy -----------------------------------------------------------------


def bench_accuracy(data: dict, names: list[str] | None) -> list[dict]:
    """Per recipe: training seconds until test accuracy first reaches each threshold."""
    import keras

    from pipeline.loop import CompiledLoop, augmenter
    from pipeline.params import parse_params
    from pipeline.training import compile_model, make_deterministic

    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    recipes = yaml.safe_load(RECIPES.read_text())
    rows = []
    for name, overrides in recipes.items():
        if names and name not in names:
            continue
        raw = json.loads(json.dumps(base))
        for key, value in (overrides or {}).items():
            section, field = key.split(".")
            raw[section][field] = value
        params = parse_params(raw)
        cfg = params.train
        make_deterministic(cfg.seed)
        steps = -(-len(data["train"][0]) // cfg.batch_size)
        model = compile_model(params, steps)
        loop = CompiledLoop(
            model,
            data["train"],
            data["val"],
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            augment=augmenter(cfg.augment_shift, cfg.augment_rotate, cfg.seed),
        )
        trained, reached, acc = 0.0, {}, 0.0
        for epoch in range(1, cfg.epochs + 1):
            start = time.perf_counter()
            loop.run_epoch()
            trained += time.perf_counter() - start
            acc = loop.evaluate(*data["test"])["accuracy"]  # not counted as training time
            for t in THRESHOLDS:
                if acc >= t and t not in reached:
                    reached[t] = (round(trained, 1), epoch)
        keras.backend.clear_session()
        rows.append(
            {
                "recipe": name,
                "overrides": overrides or {},
                "epochs": cfg.epochs,
                "train_s": round(trained, 1),
                "final_test_accuracy": round(acc, 4),
                **{f"to_{t:.1%}": reached.get(t, "not reached") for t in THRESHOLDS},
            }
        )
        print(rows[-1], flush=True)
    return rows


# --- report ---------------------------------------------------------------------------


def machine() -> dict:
    import keras
    import tensorflow as tf

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    gpus = tf.config.list_physical_devices("GPU")
    versions = {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }
    try:
        import torch

        versions["torch"] = torch.__version__
    except ImportError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "device": gpus[0].name if gpus else "CPU",
        **versions,
    }


def to_markdown(results: dict) -> str:
    import pandas as pd

    out = [MARKER, "", "Printed by `python -m benchmarks.train_speed`; the machine:", ""]
    out += [f"- {k}: {v}" for k, v in results["machine"].items()]
    if "speed" in results:
        out += [
            "",
            "## Training speed (reference recipe, batch 128, medians)",
            "",
            pd.DataFrame(results["speed"]).to_markdown(index=False),
        ]
    if "overhead" in results:
        o = results["overhead"]
        out += [
            "",
            "## Pipeline overhead (cold `dvc repro`, 1 epoch, local mirror)",
            "",
            f"One cold `dvc repro`: {o['cold_total_s']} s, of which training (the epoch "
            f"loop) {o['fit_s']} s: **{o['outside_fit_s']} s outside training**. "
            f"No-op `dvc repro`: **{o['noop_repro_s']} s**.",
            "",
            "Each stage alone (`dvc repro --single-item STAGE`; DVC's own start-up, about "
            "0.7 s, is in each):",
            "",
            pd.DataFrame([o["stages_s"]]).to_markdown(index=False),
        ]
    if "accuracy" in results:
        rows = [
            {**r, "overrides": " ".join(f"-S {k}={v}" for k, v in r["overrides"].items())}
            for r in results["accuracy"]
        ]
        out += [
            "",
            "## Time to accuracy (training seconds, epoch) on the 10,000 test images",
            "",
            pd.DataFrame(rows).to_markdown(index=False),
        ]
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["speed", "overhead", "accuracy"], action="append")
    parser.add_argument("--rounds", type=int, default=5, help="timed epochs per trainer")
    parser.add_argument("--recipe", action="append", help="only these recipes")
    parser.add_argument("--write", type=Path, help="also write the report (markdown) here")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parts = args.only or ["speed", "overhead", "accuracy"]
    results: dict = {"machine": machine()}
    print(json.dumps(results["machine"]), flush=True)
    mirror = os.environ.get("MNIST_MIRROR") or str(ROOT.parent / "shared/mnist")
    os.environ.setdefault("MNIST_MIRROR", mirror)
    data = load_data() if {"speed", "accuracy"} & set(parts) else None
    if "speed" in parts:
        results["speed"] = bench_speed(data, args.rounds)
    if "overhead" in parts:
        results["overhead"] = bench_overhead(mirror)
    if "accuracy" in parts:
        results["accuracy"] = bench_accuracy(data, args.recipe)
    report = to_markdown(results)
    print(report)
    if args.write:
        # Hand-written notes above the marker survive a rewrite.
        before = args.write.read_text().split(MARKER)[0] if args.write.exists() else ""
        args.write.write_text(before + report)


if __name__ == "__main__":
    main()
