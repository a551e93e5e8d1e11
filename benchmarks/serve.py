"""pipeline.serve against ``mlflow models serve`` of the same champion (issue 30), and
against its ceilings (issue 37): its own stack with nothing in it, and the model alone.

    python -m benchmarks.serve                 # ~4 min on 2 cores
    python -m benchmarks.serve --seconds 3     # shorter phases

In a temporary copy of the project, a champion is trained on the smoke recipe (2,000
images, 1 epoch: the same LeNet-5, so the same cost per prediction as the reference
model). Each server then starts on 127.0.0.1 and the same client (pipeline/testing/
load.py: asyncio + aiohttp, one process on the same machine) drives it, phase by phase,
for ``--seconds`` each after a short warm-up: single-image requests at concurrency 1, 8,
16 and 32, then 128-image requests at concurrency 4; pipeline.serve also answers the same
128-image requests over the Open Inference Protocol, in JSON and with binary tensors (the
binary tensor data extension, both ways). Printed per server and phase:
requests/s, images/s, p50 and p99 latency, errors; per server, seconds from start to
ready and the resident memory of its processes after the load.

The ceilings: ``trivial FastAPI`` (benchmarks/trivial_app.py: FastAPI on uvicorn with
uvloop and httptools, orjson, 10 numbers an image, no model) under the same load, and the
champion's NumPy forward pass in this process on 128-image batches. The ratios to each are
printed last.

Each server is run at 1 and 2 workers and both are printed (on 2 cores the client, the
prediction log's writer and the server share the cores: the best setting differs by
machine). ``mlflow models serve`` runs with ``--env-manager local`` (this venv) as the
README shows it; it answers with TensorFlow. The CPU class is printed first.
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
import psutil

from benchmarks.train_speed import machine_class
from pipeline.core.inference import NumpyModel
from pipeline.core.layout import MODEL_FILE
from pipeline.testing.load import drive
from pipeline.testing.project import (
    SHARED_MNIST,
    SMOKE,
    copy_project,
    free_port,
    run,
    set_params,
    stage_env,
    wait_http,
)

PHASES = (("1 image", 1, 1), ("1 image", 8, 1), ("1 image", 16, 1), ("1 image", 32, 1),
          ("128 images", 4, 128))  # fmt: skip
OIP_PHASES = (("128 images OIP JSON", 4, 128, False), ("128 images OIP binary", 4, 128, True))
TRIVIAL = "trivial FastAPI"  # the stack's ceiling: benchmarks/trivial_app.py
SERVERS = ("pipeline.serve", "mlflow models serve", TRIVIAL)
ROOT = Path(__file__).resolve().parent.parent


def oip_request(x: np.ndarray, binary: bool) -> tuple[bytes, dict[str, str]]:
    """An Open Inference Protocol request of UINT8 images, as tritonclient builds it: JSON,
    or the binary tensor data extension (JSON header, then the raw tensor; binary output)."""
    tensor = {"name": "images", "shape": list(x.shape), "datatype": "UINT8"}
    if not binary:
        return json.dumps({"inputs": [{**tensor, "data": x.reshape(-1).tolist()}]}).encode(), {
            "Content-Type": "application/json"
        }
    raw = np.ascontiguousarray(x, np.uint8).tobytes()
    tensor["parameters"] = {"binary_data_size": len(raw)}
    header = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}})
    return header.encode() + raw, {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }


def announce(name: str) -> dict[str, str]:
    """Print the benchmark's CPU class, cores and load; the stages' environment."""
    cls = machine_class()
    print(f"# {name} benchmark: {cls['label']}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    return stage_env(MNIST_MIRROR=os.environ.get("MNIST_MIRROR", str(SHARED_MNIST)))


def champion_project(base: Path, env: dict[str, str]) -> Path:
    project = copy_project(base / "project")
    set_params(project, **{**SMOKE, "train__epochs": 1})
    run(["git", "commit", "-qam", "smoke params"], project)
    run(["dvc", "repro"], project, env)
    return project


def rss_mb(proc: subprocess.Popen) -> float:
    """Resident memory of the server and its worker processes."""
    root = psutil.Process(proc.pid)
    procs = [root, *root.children(recursive=True)]
    return sum(p.memory_info().rss for p in procs if p.is_running()) / 2**20


def server_cmd(kind: str, port: int, workers: int) -> tuple[list[str], str]:
    if kind == "pipeline.serve":
        cmd = [sys.executable, "-m", "pipeline.serve", "--port", str(port),
               "--workers", str(workers)]  # fmt: skip
        return cmd, f"http://127.0.0.1:{port}/v2/health/ready"
    if kind == TRIVIAL:
        cmd = [sys.executable, "-m", "uvicorn", "benchmarks.trivial_app:app", "--host",
               "127.0.0.1", "--port", str(port), "--workers", str(workers), "--loop", "uvloop",
               "--http", "httptools", "--no-access-log", "--log-level", "warning"]  # fmt: skip
        return cmd, f"http://127.0.0.1:{port}/ping"
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m",
           "models:/lenet5-mnist@champion", "--host", "127.0.0.1", "--port", str(port),
           "--env-manager", "local", "--workers", str(workers)]  # fmt: skip
    return cmd, f"http://127.0.0.1:{port}/ping"


def bench(kind: str, workers: int, project: Path, env: dict, x: np.ndarray, seconds: float):
    port = free_port()
    cmd, health = server_cmd(kind, port, workers)
    if kind == "mlflow models serve":
        env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    start = time.perf_counter()
    cwd = ROOT if kind == TRIVIAL else project
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    rows = []
    try:
        wait_http(health, proc, poll_s=0.05)  # (the time to ready, to 50 ms)
        ready_s = time.perf_counter() - start
        base = f"http://127.0.0.1:{port}"

        def phase(url: str, label: str, concurrency: int, size: int, bodies, headers=None):
            drive(url, lambda i: bodies[i % len(bodies)], concurrency, seconds=1.0,
                  headers=headers)  # (warm-up)  # fmt: skip
            load = drive(url, lambda i: bodies[i % len(bodies)], concurrency,
                         seconds=seconds, headers=headers)  # fmt: skip
            rows.append({
                "server": f"{kind} -w {workers}", "request": label,
                "concurrency": concurrency, "req_s": load.throughput,
                "img_s": load.throughput * size, "p50_ms": load.percentile(50),
                "p99_ms": load.percentile(99), "errors": load.errors,
            })  # fmt: skip
            print(_row(rows[-1]), flush=True)

        for label, concurrency, size in PHASES:
            bodies = [json.dumps({"inputs": x[i : i + size].tolist()}).encode()
                      for i in range(0, 512, max(1, size // 4))][:64]  # fmt: skip
            phase(f"{base}/invocations", label, concurrency, size, bodies)
        if kind == "pipeline.serve":
            for label, concurrency, size, binary in OIP_PHASES:
                made = [oip_request(x[i : i + size], binary) for i in range(0, 512, size // 4)]
                phase(f"{base}/v2/models/lenet5-mnist/infer", label, concurrency, size,
                      [b for b, _ in made][:64], made[0][1])  # fmt: skip
        memory = rss_mb(proc)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    print(f"  {kind} -w {workers}: ready in {ready_s:.2f} s, {memory:.0f} MB resident", flush=True)
    return rows, ready_s, memory


def forward_ceiling(project: Path, x: np.ndarray, seconds: float) -> float:
    """Images/s of the champion's NumPy forward pass in this process, 128 images a call:
    the model's ceiling, with no HTTP, JSON or log. At its best setting of the BLAS: its
    default (a thread per core) and one thread (what the service runs) are both measured,
    and the faster counts."""
    from threadpoolctl import threadpool_limits

    model = NumpyModel.load(project / MODEL_FILE)
    batches = [x[i : i + 128].astype(np.float32) for i in range(0, len(x), 128)]

    def rate() -> float:
        model.forward(batches[0])  # warm
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            model.forward(batches[done % len(batches)])
            done += 1
        return done * 128 / (time.perf_counter() - start)

    default = rate()
    with threadpool_limits(limits=1, user_api="blas"):
        one = rate()
    print(f"forward pass, 128 images a call: {default:.0f} images/s with the BLAS's default "
          f"threads, {one:.0f} with one")  # fmt: skip
    return max(default, one)


def _row(r: dict) -> str:
    cells = (
        r["server"], r["request"], r["concurrency"], f"{r['req_s']:.0f}", f"{r['img_s']:.0f}",
        f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}", r["errors"],
    )  # fmt: skip
    return "| " + " | ".join(map(str, cells)) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS))
    args = parser.parse_args()
    env = announce("serve")
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        project = champion_project(Path(tmp), env)
        with np.load(project / "data/prepared/test.npz", allow_pickle=False) as z:
            x = z["x"][:1024]
        print("| server | request | concurrency | req/s | images/s | p50 ms | p99 ms | errors |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        summary = []
        for workers in args.workers:
            for kind in args.servers:
                rows, ready, memory = bench(kind, workers, project, env, x, args.seconds)
                summary.append((kind, workers, rows, ready, memory))
        forward = forward_ceiling(project, x, args.seconds)
    best = {}
    for kind, _, rows, _, _ in summary:
        for r in rows:
            key = (kind, r["request"], r["concurrency"])
            best[key] = max(best.get(key, 0.0), r["req_s"])
    print(f"\nin-process NumPy forward pass, 128 images a call, the BLAS at its best: "
          f"{forward:.0f} images/s")  # fmt: skip
    if "pipeline.serve" in args.servers:
        json_, binary = (best[("pipeline.serve", label, 4)] * 128 for label, *_ in OIP_PHASES)
        print(f"OIP, 128 images at concurrency 4, best of the worker settings: binary "
              f"{binary:.0f} images/s, JSON {json_:.0f}: {binary / json_:.2f}x")  # fmt: skip
    print("\nbest of the worker settings, pipeline.serve against each:")
    ours = {k[1:]: v for k, v in best.items() if k[0] == "pipeline.serve"}
    for kind in (k for k in args.servers if k != "pipeline.serve"):
        for label, concurrency, _ in PHASES:
            theirs = best[(kind, label, concurrency)]
            mine = ours.get((label, concurrency), float("nan"))
            print(f"  {kind}, {label} at concurrency {concurrency}: {mine:.0f} / {theirs:.0f} "
                  f"req/s = {mine / theirs:.2f}x")  # fmt: skip
    if ours:
        for label, concurrency, size in (PHASES[-1], *(phase[:3] for phase in OIP_PHASES)):
            img_s = ours[(label, concurrency)] * size
            print(f"  forward pass, {label}: {img_s:.0f} / {forward:.0f} images/s = "
                  f"{img_s / forward:.0%} of the model")  # fmt: skip


if __name__ == "__main__":
    main()
