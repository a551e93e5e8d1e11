"""Training speed, pipeline overhead and time-to-accuracy, printed as figures.

    python -m benchmarks.train_speed                 # everything (~15 min on 2 cores)
    python -m benchmarks.train_speed --only speed    # speed | profile | overhead | accuracy
    python -m benchmarks.train_speed --write BENCHMARKS.md
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python -m benchmarks.train_speed ...
        # the AVX2 class emulated on an AVX-512 CPU (oneDNN and PyTorch kernels capped)

Speed: on the same data in one process, alternates one epoch at a time
  (a) the seed post's bare Keras script (28×28, SGD 0.01, batch 128, model.fit on arrays),
  (b) the pipeline's train stage with the same recipe (train.loop compiled), 28×28 and
      the default 32×32, and
  (c) the same LeNet-5 recipe in PyTorch eager, 28×28 and 32×32, when torch is installed,
and prints medians over the epochs after a warm-up: samples/s, and GFLOP/s as a share of
the machine's FP32 peak (FLOPs: pipeline.core.model.train_flops_per_image; peak: fp32_peak).
Profile: one epoch of the pipeline's loop under the TensorFlow profiler, op time per
layer, forward and backward. Overhead: a cold `dvc repro` split per
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

from pipeline.core.hardware import cpu_flags

ROOT = Path(__file__).resolve().parents[1]
RECIPES = Path(__file__).with_name("recipes.yaml")
RESULTS = Path(__file__).with_name("results")  # one JSON per machine class and CPU
THRESHOLDS = (0.983, 0.990)
MARKER = "<!-- everything below is written by: python -m benchmarks.train_speed --write -->"


# --- machine class and FP32 peak -----------------------------------------------------------

FMA_UNITS = 2  # vector FMA pipes per core: Xeon Scalable Gold/Platinum, AMD Zen 2-4 (assumed)


def machine_class(flags: set[str] | None = None, env: dict | None = None) -> dict:
    """The vector class the kernels run with: the CPU's, or lower when capped by
    ONEDNN_MAX_CPU_ISA (oneDNN, used by TensorFlow) and ATEN_CPU_CAPABILITY (PyTorch)."""
    flags = cpu_flags() if flags is None else flags
    env = os.environ if env is None else env
    native = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "SSE"
    extensions = sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
    cap = env.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if native == "AVX-512" and cap.startswith("AVX2"):
        label = "AVX2 (ISA capped via ONEDNN_MAX_CPU_ISA / ATEN_CPU_CAPABILITY on an AVX-512 CPU)"
        return {
            "class": "AVX2",
            "label": label,
            "emulated": True,
            "vector_bits": 256,
            "extensions": extensions,
        }
    bits = {"AVX-512": 512, "AVX2": 256, "SSE": 128}[native]
    return {
        "class": native,
        "label": f"{native} (native)",
        "emulated": False,
        "vector_bits": bits,
        "extensions": extensions,
    }


def cpu_ghz() -> float:
    """The clock /proc/cpuinfo reports (nominal on VMs; turbo, if any, is not visible)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("cpu MHz"):
            return float(line.split(":", 1)[1]) / 1000
    return float("nan")


def fp32_peak(vector_bits: int, cores: int, ghz: float, fma_units: int = FMA_UNITS) -> float:
    """FP32 peak in GFLOP/s = cores × FMA units × (vector bits / 32) lanes × 2 × GHz."""
    return cores * fma_units * (vector_bits // 32) * 2 * ghz


# --- data -------------------------------------------------------------------------------


def load_data() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """train/val/test splits, made with `dvc repro preprocess` if they are missing."""
    from pipeline.core.data import load_split

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
        self.flops_per_image = _flops(0)

    def epoch(self) -> None:
        self.model.fit(self.x, self.y, batch_size=128, epochs=1, verbose=0)


class Pipeline:
    """pipeline.train's own code path with the reference recipe from params.yaml."""

    def __init__(self, data: dict, loop: str, padding: int) -> None:
        from pipeline.core.params import load_params
        from pipeline.core.training import compile_model

        params = load_params(ROOT / "params.yaml")
        params = dataclasses.replace(
            params,
            model=dataclasses.replace(params.model, padding=padding),
            train=dataclasses.replace(params.train, loop=loop),
        )
        self.name = f"(b) pipeline train, {28 + 2 * padding}x{28 + 2 * padding}, loop={loop}"
        self.cfg, self.data = params.train, data
        self.model = compile_model(params, steps_per_epoch=430)
        self.flops_per_image = _flops(padding)
        if loop == "compiled":
            from pipeline.core.loop import CompiledLoop

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
            from pipeline.core.training import fit

            fit(
                self.model,
                self.data["train"],
                self.data["val"],
                dataclasses.replace(self.cfg, epochs=1),
                [],
            )


def _flops(padding: int) -> int:
    """Training FLOPs per image of the pipeline's LeNet-5 (the other trainers' network)."""
    from pipeline.core.model import build_lenet5, train_flops_per_image
    from pipeline.core.params import ModelParams

    cfg = ModelParams(activation="tanh", pooling="max", padding=padding)
    return sum(train_flops_per_image(build_lenet5(cfg)).values())


class TorchEager:
    """The same LeNet-5 recipe in PyTorch eager (tanh, max-pool, SGD 0.01, batch 128)."""

    def __init__(self, data: dict, padding: int) -> None:
        import torch
        from torch import nn

        torch.manual_seed(0)
        x, y = data["train"]
        side = 28 + 2 * padding
        self.name = f"(c) PyTorch eager, {side}x{side}"
        self.flops_per_image = _flops(padding)
        self.torch = torch
        self.x = torch.from_numpy(x.astype("float32") / 255.0)[:, None]
        self.y = torch.from_numpy(y.astype("int64"))
        s4 = ((side - 4) // 2 - 4) // 2  # 5 at 32×32, 4 at 28×28
        self.model = nn.Sequential(
            nn.ZeroPad2d(padding),
            nn.Conv2d(1, 6, 5),
            nn.Tanh(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.Tanh(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * s4 * s4, 120),
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


def bench_speed(data: dict, rounds: int, peak_gflops: float) -> list[dict]:
    """Alternate one epoch per trainer; median seconds per epoch after one warm-up epoch."""
    trainers = [BareKeras(data), Pipeline(data, "compiled", 0), Pipeline(data, "compiled", 2)]
    try:
        trainers += [TorchEager(data, 0), TorchEager(data, 2)]
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
    torch28 = times.get("(c) PyTorch eager, 28x28")
    rows = []
    for t in trainers:
        ts = times[t.name]
        med = statistics.median(ts)
        gflops = n * t.flops_per_image / med / 1e9
        rows.append(
            {
                "trainer": t.name,
                "s_per_epoch": round(med, 2),
                "samples_per_s": round(n / med),
                "GFLOP_per_s": round(gflops, 1),
                "pct_of_peak": round(100 * gflops / peak_gflops, 1),
                "vs_a": round(base / med, 2),
                "vs_torch_28": round(statistics.median(torch28) / med, 2) if torch28 else None,
                "epochs": len(ts),
                "all_s": [round(x, 2) for x in ts],
            }
        )
    return rows


# --- per-op profile -------------------------------------------------------------------


def bench_profile(data: dict, padding: int = 2) -> dict:
    """One epoch of the pipeline's compiled loop under the TensorFlow profiler: op time
    per layer, forward vs backward (ops under ``gradient_tape/``), in ms per step.

    Op times are summed over TensorFlow's threads, so they can add up to more than the
    wall time when two ops run at once on the two cores.
    """
    import tensorflow as tf

    trainer = Pipeline(data, "compiled", padding)
    trainer.epoch()  # trace and warm up outside the profile
    order = tf.constant(np.random.default_rng(0).permutation(len(data["train"][0])), "int32")
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        start = time.perf_counter()
        trainer.loop._train_epoch(order)  # the training steps only, no validation
        wall = time.perf_counter() - start
        tf.profiler.experimental.stop()
        ops = _op_seconds(next(Path(logdir).rglob("*.xplane.pb")))
    steps = -(-len(data["train"][0]) // trainer.cfg.batch_size)
    layers = [layer.name for layer in trainer.model.layers]
    table: dict[tuple[str, str], float] = {}
    for name, seconds in ops.items():
        if "/while/" not in name:
            continue  # not an op of the training steps
        part = "backward" if "gradient_tape/" in name else "forward"
        scope = name.split(":")[0].split("/")
        layer = next((x.rsplit("_", 1)[0] for x in scope if x.rsplit("_", 1)[0] in layers), None)
        if layer is None:
            layer = "optimizer" if any(x.startswith(("sgd", "SGD")) for x in scope) else "other"
            part = "update" if layer == "optimizer" else part
        table[(layer, part)] = table.get((layer, part), 0.0) + seconds
    rows = [
        {"layer": layer, "part": part, "ms_per_step": round(1000 * sec / steps, 3)}
        for (layer, part), sec in sorted(table.items(), key=lambda kv: -kv[1])
    ]
    total = sum(table.values())
    for row in rows:
        row["share_pct"] = round(100 * row["ms_per_step"] * steps / 1000 / total, 1)
    top_ops = sorted(ops.items(), key=lambda kv: -kv[1])[:12]
    return {
        "side": 28 + 2 * padding,
        "wall_s": round(wall, 2),
        "op_s": round(total, 2),
        "steps": steps,
        "layers": rows,
        "top_ops": [
            {"op": name.split("/while/")[-1], "ms_per_step": round(1000 * sec / steps, 3)}
            for name, sec in top_ops
            if "/while/" in name
        ],
    }


def _op_seconds(xplane: Path) -> dict[str, float]:
    """{"scope/op:OpType": seconds} over the TensorFlow op events of a profile."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    space.ParseFromString(xplane.read_bytes())
    seconds: dict[str, float] = {}
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_"):  # op threads, not python/executor frames
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" in name:
                    seconds[name] = seconds.get(name, 0.0) + event.duration_ps / 1e12
    return seconds


# --- pipeline overhead ----------------------------------------------------------------


def bench_overhead(mirror: str) -> dict:
    """Cold `dvc repro` (1 epoch) in a fresh temp copy: once as one call, once stage by
    stage for the split; then a no-op `dvc repro`."""
    sys.path.insert(0, str(ROOT))
    from pipeline.testing.project import copy_project, set_params

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

    from pipeline.core.loop import CompiledLoop, augmenter
    from pipeline.core.params import parse_params
    from pipeline.core.training import compile_model, make_deterministic

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
        versions["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except ImportError:
        pass
    cls = machine_class()
    cores = len(os.sched_getaffinity(0))
    ghz = cpu_ghz()
    return {
        "class": cls["label"],
        "cpu": cpu,
        "vector_extensions": " ".join(cls["extensions"]),
        "cores": cores,
        "clock_GHz": ghz,
        "fp32_peak_GFLOP_per_s": round(fp32_peak(cls["vector_bits"], cores, ghz), 1),
        "peak_formula": f"{cores} cores × {FMA_UNITS} FMA units × {cls['vector_bits'] // 32} "
        f"FP32 lanes × 2 FLOP/FMA × {ghz} GHz",
        "device": gpus[0].name if gpus else "CPU",
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        **versions,
    }


def machine_key(m: dict) -> str:
    """File name for one machine class on one CPU model: results/<key>.json."""
    text = f"{m['class'].split(' (')[0]}-{'emulated' if 'capped' in m['class'] else 'native'}"
    text += f"-{m['cpu']}"
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def to_markdown(results: dict) -> str:
    """One machine's section: what it is, then each part that was measured on it."""
    import pandas as pd

    m = results["machine"]
    out = [f"## {m['class']}: {m['cpu']}", ""]
    out += [f"- {k}: {v}" for k, v in m.items() if k not in ("class", "cpu")]
    if "speed" in results:
        rows = [{k: v for k, v in r.items() if k != "all_s"} for r in results["speed"]]
        out += [
            "",
            "### Training speed (reference recipe, batch 128, medians of alternated epochs)",
            "",
            pd.DataFrame(rows).to_markdown(index=False),
        ]
        if "load_avg" in results:
            before, after = results["load_avg"]
            out += [
                "",
                f"Load average (1 min) before and after: {before}, {after} on "
                f"{m['cores']} cores: above {m['cores']}, other jobs shared the cores and "
                "every trainer ran slower than on an idle machine.",
            ]
    if "profile" in results:
        pr = results["profile"]
        out += [
            "",
            f"### Where a training step goes ({pr['side']}x{pr['side']}, TensorFlow profiler)",
            "",
            f"One profiled epoch: {pr['wall_s']} s wall, {pr['op_s']} s of op time summed "
            f"over threads, {pr['steps']} steps. Per layer and direction:",
            "",
            pd.DataFrame(pr["layers"]).to_markdown(index=False),
            "",
            "The slowest single ops:",
            "",
            pd.DataFrame(pr["top_ops"]).to_markdown(index=False),
        ]
    if "overhead" in results:
        o = results["overhead"]
        out += [
            "",
            "### Pipeline overhead (cold `dvc repro`, 1 epoch, local mirror)",
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
            "### Time to accuracy (training seconds, epoch) on the 10,000 test images",
            "",
            pd.DataFrame(rows).to_markdown(index=False),
        ]
    return "\n".join(out) + "\n"


def write_report(path: Path, results: dict) -> None:
    """Store this machine's results (merged into its earlier ones), then rewrite the part
    of ``path`` below MARKER with one section per stored machine class."""
    RESULTS.mkdir(exist_ok=True)
    stored = RESULTS / f"{machine_key(results['machine'])}.json"
    merged = json.loads(stored.read_text()) if stored.exists() else {}
    stored.write_text(json.dumps({**merged, **results}, indent=1, ensure_ascii=False) + "\n")
    sections = [to_markdown(json.loads(f.read_text())) for f in sorted(RESULTS.glob("*.json"))]
    # Hand-written notes above the marker survive a rewrite.
    before = path.read_text().split(MARKER)[0] if path.exists() else ""
    path.write_text(before + MARKER + "\n\n" + "\n".join(sections))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parts_all = ["speed", "profile", "overhead", "accuracy"]
    parser.add_argument("--only", choices=parts_all, action="append")
    parser.add_argument("--rounds", type=int, default=5, help="timed epochs per trainer")
    parser.add_argument("--recipe", action="append", help="only these recipes")
    parser.add_argument("--write", type=Path, help="also write the report (markdown) here")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # PyTorch's OpenMP threads spin while they wait; on a shared 2-core machine that made
    # its epochs 10× slower (51 s instead of 5 s). Passive waiting is its best setting here;
    # TensorFlow's own thread pool does not use OpenMP.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parts = args.only or parts_all
    results: dict = {"machine": machine()}
    print(json.dumps(results["machine"]), flush=True)
    mirror = os.environ.get("MNIST_MIRROR") or str(ROOT.parent / "shared/mnist")
    os.environ.setdefault("MNIST_MIRROR", mirror)
    data = load_data() if {"speed", "profile", "accuracy"} & set(parts) else None
    if "speed" in parts:
        peak = results["machine"]["fp32_peak_GFLOP_per_s"]
        load_before = os.getloadavg()[0]
        results["speed"] = bench_speed(data, args.rounds, peak)
        # Other jobs on the same cores slow every trainer; the load says how busy it was.
        results["load_avg"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
    if "profile" in parts:
        results["profile"] = bench_profile(data)
    if "overhead" in parts:
        results["overhead"] = bench_overhead(mirror)
    if "accuracy" in parts:
        results["accuracy"] = bench_accuracy(data, args.recipe)
    print(to_markdown(results))
    if args.write:
        write_report(args.write, results)


if __name__ == "__main__":
    main()
