"""The train stage against PyTorch and JAX, each at its best here: samples/s, every epoch
counted.

    python -m benchmarks.peers                  # all peers, 5 epochs each, 32×32
    python -m benchmarks.peers --side 28 --epochs 3 --only pipeline torch jax

Every peer trains the same LeNet-5 recipe (tanh, max-pool, SGD lr 0.01, batch 128, on the
prepared training split, then validated on the val split after every epoch, as the
pipeline does) in a worker process of its own, started with its settings in the
environment (OpenMP's thread count and wait policy must be set before a library loads).
The driver alternates the workers one epoch at a time, so a change of load hits all of
them alike (the others are stopped, SIGSTOP, while one trains), and counts every
epoch, the first one (tracing, compiling, allocating) included: samples/s = training
images × epochs / the sum of the epochs' seconds. Imports and data loading happen before
the clock starts, for every peer alike (benchmarks/stage_overhead.py measures those).

Peers (names for ``--only``):
  pipeline           the train stage's own loop (pipeline/core/loop.py), params.yaml's recipe
  pipeline-xla       the same loop with ``jit_compile=True`` (XLA), without op determinism
                     (TensorFlow refuses it: MaxPoolGrad has no deterministic XLA kernel)
  pipeline-bf16      the same loop with ``train.precision: mixed_bfloat16``
  torch              PyTorch eager, its default threading
  torch-bf16         PyTorch eager, default threading, ``torch.autocast`` to bfloat16
  torch-N-POLICY     PyTorch eager, N threads, OMP_WAIT_POLICY=POLICY (active | passive)
  torch-compile      ``torch.compile(model)`` with default settings
  jax                ``jax.jit`` of a whole epoch (``lax.scan`` over batches) + optax.sgd
The best peer is the fastest of every one that is not the pipeline; a missing library is
said in one line and its peers are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BATCH, LR, VAL_BATCH = 128, 0.01, 1024
TORCH_SETTINGS = [(n, policy) for n in (1, 2) for policy in ("active", "passive")]
PEERS = [
    "pipeline",
    "pipeline-xla",
    "pipeline-bf16",
    "torch",
    "torch-bf16",
    *(f"torch-{n}-{p}" for n, p in TORCH_SETTINGS),
    "torch-compile",
    "jax",
]


def peer_env(name: str) -> dict[str, str]:
    """The environment a peer's worker starts with."""
    env = dict(os.environ)
    if name.startswith("torch-") and name not in ("torch-compile", "torch-bf16"):
        _, n, policy = name.split("-")
        env |= {"OMP_NUM_THREADS": n, "OMP_WAIT_POLICY": policy.upper()}
    if name == "jax":
        env |= {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", "JAX_PLATFORMS": "cpu"}
    return env


# --- the trainers (each runs in its worker) ---------------------------------------------


def _data() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from pipeline.core.data import load_split

    return {s: load_split(s) for s in ("train", "val")}


class PipelineTrainer:
    def __init__(self, data: dict, side: int, xla: bool, bf16: bool = False) -> None:
        import dataclasses

        import keras

        from pipeline.core.loop import CompiledLoop
        from pipeline.core.params import load_params
        from pipeline.core.training import compile_model, make_deterministic

        params = load_params(ROOT / "params.yaml")
        params = dataclasses.replace(
            params,
            model=dataclasses.replace(params.model, padding=(side - 28) // 2),
            train=dataclasses.replace(
                params.train, precision="mixed_bfloat16" if bf16 else params.train.precision
            ),
        )
        if xla:  # TensorFlow has no deterministic XLA kernel for MaxPoolGrad: seeds only
            keras.utils.set_random_seed(params.train.seed)
        else:
            make_deterministic(params.train.seed)
        steps = -(-len(data["train"][0]) // params.train.batch_size)
        self.loop = CompiledLoop(
            compile_model(params, steps), data["train"], data["val"],
            batch_size=params.train.batch_size, seed=params.train.seed, jit_compile=xla,
        )  # fmt: skip

    def epoch(self) -> float:
        return self.loop.run_epoch()["val_accuracy"]


class TorchTrainer:
    def __init__(self, data: dict, side: int, compiled: bool, bf16: bool = False) -> None:
        import contextlib

        import torch
        from torch import nn

        torch.manual_seed(0)
        if "OMP_NUM_THREADS" in os.environ:
            torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        self.torch = torch
        (x, y), (xv, yv) = data["train"], data["val"]
        self.x = torch.from_numpy(x.astype("float32") / 255.0)[:, None]
        self.y = torch.from_numpy(y.astype("int64"))
        self.xv = torch.from_numpy(xv.astype("float32") / 255.0)[:, None]
        self.yv = torch.from_numpy(yv.astype("int64"))
        s4 = ((side - 4) // 2 - 4) // 2  # 5 at 32×32, 4 at 28×28
        self.model = nn.Sequential(
            nn.ZeroPad2d((side - 28) // 2),
            nn.Conv2d(1, 6, 5), nn.Tanh(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.Tanh(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * s4 * s4, 120), nn.Tanh(),
            nn.Linear(120, 84), nn.Tanh(),
            nn.Linear(84, 10),
        )  # fmt: skip
        self.forward = torch.compile(self.model) if compiled else self.model
        self.opt = torch.optim.SGD(self.model.parameters(), lr=LR)
        self.loss = nn.CrossEntropyLoss()
        # bf16 math on float32 weights, as Keras' mixed_bfloat16 (the loss in float32)
        self.autocast = (
            (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16
            else contextlib.nullcontext
        )  # fmt: skip

    def epoch(self) -> float:
        torch = self.torch
        self.model.train()
        order = torch.randperm(len(self.x))
        for i in range(0, len(order), BATCH):
            idx = order[i : i + BATCH]
            self.opt.zero_grad()
            with self.autocast():
                out = self.forward(self.x[idx])
            self.loss(out.float(), self.y[idx]).backward()
            self.opt.step()
        self.model.eval()
        correct = 0
        with torch.no_grad(), self.autocast():
            for i in range(0, len(self.xv), VAL_BATCH):
                out = self.forward(self.xv[i : i + VAL_BATCH])
                correct += int((out.argmax(1) == self.yv[i : i + VAL_BATCH]).sum())
        return correct / len(self.xv)


class JaxTrainer:
    """LeNet-5 in plain JAX: one jitted call trains a whole epoch (``lax.scan`` over the
    full batches, then the remainder batch), like the pipeline's compiled loop."""

    def __init__(self, data: dict, side: int) -> None:
        import jax
        import jax.numpy as jnp
        import optax

        self.jax, self.jnp = jax, jnp
        pad = (side - 28) // 2
        (x, y), (xv, yv) = data["train"], data["val"]

        def prep(a):  # (N, 28, 28) uint8 -> (N, side, side, 1) float32
            return jnp.pad(jnp.asarray(a, jnp.float32)[..., None] / 255.0,
                           ((0, 0), (pad, pad), (pad, pad), (0, 0)))  # fmt: skip

        self.x, self.y = prep(x), jnp.asarray(y, jnp.int32)
        self.xv, self.yv = prep(xv), jnp.asarray(yv, jnp.int32)
        s4 = ((side - 4) // 2 - 4) // 2
        key = jax.random.PRNGKey(0)
        shapes = {"c1": (5, 5, 1, 6), "c3": (5, 5, 6, 16), "f5": (16 * s4 * s4, 120),
                  "f6": (120, 84), "out": (84, 10)}  # fmt: skip
        params = {}
        for i, (name, shape) in enumerate(shapes.items()):  # Glorot uniform, zero bias
            fan_in, fan_out = np.prod(shape[:-1]), shape[-1] * np.prod(shape[:-2])
            limit = np.sqrt(6 / (fan_in + fan_out))
            w = jax.random.uniform(jax.random.fold_in(key, i), shape, jnp.float32, -limit, limit)
            params[name] = (w, jnp.zeros(shape[-1], jnp.float32))
        self.params = params
        opt = optax.sgd(LR)
        self.opt_state = opt.init(params)

        def forward(p, xb):
            dims = ("NHWC", "HWIO", "NHWC")
            h = xb
            for name in ("c1", "c3"):
                w, b = p[name]
                h = jax.lax.conv_general_dilated(h, w, (1, 1), "VALID", dimension_numbers=dims)
                h = jnp.tanh(h + b)
                h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1),
                                          "VALID")  # fmt: skip
            h = h.reshape(len(h), -1)
            for name in ("f5", "f6"):
                w, b = p[name]
                h = jnp.tanh(h @ w + b)
            w, b = p["out"]
            return h @ w + b  # logits

        def loss(p, xb, yb):
            return optax.softmax_cross_entropy_with_integer_labels(forward(p, xb), yb).mean()

        def step(carry, batch):
            p, s = carry
            grads = jax.grad(loss)(p, *batch)
            updates, s = opt.update(grads, s, p)
            return (optax.apply_updates(p, updates), s), None

        @jax.jit
        def train_epoch(p, s, x, y, order):  # (x, y as arguments: no 200 MB constants)
            full = len(order) // BATCH * BATCH
            idx = order[:full].reshape(-1, BATCH)
            (p, s), _ = jax.lax.scan(step, (p, s), (x[idx], y[idx]))
            if full < len(order):
                rest = order[full:]
                (p, s), _ = step((p, s), (x[rest], y[rest]))
            return p, s

        @jax.jit
        def correct(p, xb, yb):
            return (forward(p, xb).argmax(1) == yb).sum()

        self.train_epoch, self.correct = train_epoch, correct
        self.rng = np.random.default_rng(0)

    def epoch(self) -> float:
        order = self.jnp.asarray(self.rng.permutation(len(self.y)).astype(np.int32))
        self.params, self.opt_state = self.train_epoch(
            self.params, self.opt_state, self.x, self.y, order
        )
        hits = sum(
            int(self.correct(self.params, self.xv[i : i + VAL_BATCH], self.yv[i : i + VAL_BATCH]))
            for i in range(0, len(self.yv), VAL_BATCH)
        )
        return hits / len(self.yv)


def make_trainer(name: str, side: int):
    data = _data()
    if name.startswith("pipeline"):
        return PipelineTrainer(data, side, xla=name == "pipeline-xla", bf16=name == "pipeline-bf16")
    if name.startswith("torch"):
        return TorchTrainer(data, side, compiled=name == "torch-compile", bf16=name == "torch-bf16")
    if name == "jax":
        return JaxTrainer(data, side)
    raise SystemExit(f"unknown peer {name!r}; one of {', '.join(PEERS)}")


def worker(name: str, side: int) -> None:
    """stdin "epoch" -> one JSON line {"s": seconds, "val_accuracy": ...}; EOF ends it."""
    trainer = make_trainer(name, side)
    out = sys.__stdout__
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        if line.strip() != "epoch":
            break
        start = time.perf_counter()
        acc = trainer.epoch()
        out.write(json.dumps({"s": time.perf_counter() - start, "val_accuracy": acc}) + "\n")
        out.flush()


# --- the driver ---------------------------------------------------------------------------


def available(name: str) -> str | None:
    """None, or the one line saying why this peer cannot run here."""
    import importlib.util

    need = {"torch": "torch", "jax": "optax"}.get(name.split("-")[0])
    if need and importlib.util.find_spec(need) is None:
        return f"{name}: {need} is not installed (pip install '.[peers]'): skipped"
    return None


def start(name: str, side: int, logs: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.peers", "--worker", name, "--side", str(side)],
        cwd=ROOT, env=peer_env(name), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=open(logs / f"{name}.log", "w"), text=True,  # noqa: SIM115 (the child's)
    )  # fmt: skip
    if proc.stdout.readline().strip() != "ready":
        raise SystemExit(f"peer {name} did not start: {last_line(logs / f'{name}.log')}")
    os.kill(proc.pid, signal.SIGSTOP)  # stopped between its epochs (see epoch())
    return proc


def epoch(proc: subprocess.Popen) -> str:
    """One epoch of a worker; stopped again afterwards, so that its idle threads cannot
    spin on the cores while another peer trains (OMP_WAIT_POLICY=ACTIVE spins forever)."""
    os.kill(proc.pid, signal.SIGCONT)
    proc.stdin.write("epoch\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    os.kill(proc.pid, signal.SIGSTOP)
    return line


def last_line(log: Path) -> str:
    lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--side", type=int, choices=(28, 32), default=32)
    parser.add_argument("--only", nargs="+", choices=PEERS, metavar="PEER")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.side)

    from benchmarks.train_speed import cpu_flags, machine_class

    names = args.only or PEERS
    for name in list(names):
        if why := available(name):
            print(why)
            names.remove(name)
    n_train = len(_data()["train"][0])
    logs = Path(tempfile.mkdtemp(prefix="peers-"))  # each worker's stderr
    procs = {name: start(name, args.side, logs) for name in names}  # built before the clock
    load_before = os.getloadavg()
    seconds: dict[str, list[float]] = {name: [] for name in names}
    accuracy: dict[str, float] = {}
    for _ in range(args.epochs):
        for name, proc in procs.items():
            line = epoch(proc)
            if not line:
                raise SystemExit(f"peer {name} failed: {last_line(logs / f'{name}.log')}")
            reply = json.loads(line)
            seconds[name].append(reply["s"])
            accuracy[name] = reply["val_accuracy"]
    load_after = os.getloadavg()
    for proc in procs.values():
        os.kill(proc.pid, signal.SIGCONT)
        proc.stdin.close()
        proc.wait()

    rate = {name: n_train * len(ts) / sum(ts) for name, ts in seconds.items()}
    others = {n: r for n, r in rate.items() if not n.startswith("pipeline")}
    best = max(others, key=others.get) if others else None
    cls = machine_class(cpu_flags())
    print(
        f"CPU: {cls['label']}, {os.cpu_count()} cores; load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after; {time.strftime('%Y-%m-%d')}"
    )
    print(
        f"{args.side}x{args.side}, {n_train:,} training images, {args.epochs} epochs each, "
        "alternated, every epoch counted (the first included)\n"
    )
    print(
        "| peer | settings | samples/s | first epoch s | later epochs s | val acc | vs best peer |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in names:
        ts = seconds[name]
        later = f"{np.median(ts[1:]):.2f}" if len(ts) > 1 else "—"
        vs = f"{rate[name] / others[best]:.2f}×" if best else "—"
        print(
            f"| {name} | {settings(name)} | {rate[name]:,.0f} | {ts[0]:.2f} | {later} | "
            f"{accuracy[name]:.4f} | {vs} |"
        )
    if best:
        print(f"\nbest peer: {best} ({others[best]:,.0f} samples/s)")


def settings(name: str) -> str:
    if name == "pipeline":
        return "TensorFlow, params.yaml (train.threads: TensorFlow's default)"
    if name == "pipeline-xla":
        return "the same, jit_compile=True, not deterministic"
    if name == "pipeline-bf16":
        return "the same, train.precision: mixed_bfloat16"
    if name == "torch":
        return "eager, default threads and wait policy"
    if name == "torch-bf16":
        return "eager, default threads, torch.autocast bfloat16"
    if name == "torch-compile":
        return "torch.compile, default mode"
    if name == "jax":
        return "jax.jit epoch (lax.scan) + optax.sgd"
    _, n, policy = name.split("-")
    return f"eager, {n} thread(s), OMP_WAIT_POLICY={policy.upper()}"


if __name__ == "__main__":
    main()
