"""pipeline.serve past its capacity (issue 36): an open-loop load at 2× and 5× what it
answers, with the load shedding of params.yaml's serve section.

    python -m benchmarks.overload                   # ~1 min on 2 cores
    python -m benchmarks.overload --max-queue-ms 50

A champion is trained on the smoke slice (the same LeNet-5, the same cost per image) in a
temporary project copy; the service starts on 127.0.0.1. Its capacity is measured first
(single-image requests, 16 clients, closed loop, 3 s); then requests arrive at a fixed
rate, 2× and 5× that capacity, for ``--seconds`` each, each sent when it is due whether
or not the earlier ones were answered (pipeline/testing/load.py ``drive_rate``: latency
counted from when a request was due). Printed per phase: offered and achieved rate,
accepted req/s and their p50/p99, refused (503) and their p99, failed, the service's
resident memory after the phase, and the p99 of 20 requests sent one by one right after
it (is it normal again?). The client shares the 2 cores: at 5× it cannot always send as
fast as asked, and the achieved rate says so.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import yaml

from benchmarks.serve import announce, champion_project
from pipeline.testing.load import drive, drive_rate
from pipeline.testing.project import run, scoring_service, set_params


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q) * 1000) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--max-queue-ms", type=float, default=None,
                        help="serve.max_queue_ms for the run (default: params.yaml's)")  # fmt: skip
    args = parser.parse_args()
    env = announce("overload")
    with tempfile.TemporaryDirectory(prefix="bench-overload-") as tmp:
        project = champion_project(Path(tmp), env)
        if args.max_queue_ms is not None:
            set_params(project, serve__max_queue_ms=args.max_queue_ms)
            run(["git", "commit", "-qam", "bound"], project)
        serve = yaml.safe_load((project / "params.yaml").read_text())["serve"]
        print(f"serve.max_queue {serve['max_queue']}, serve.max_queue_ms {serve['max_queue_ms']}")
        with np.load(project / "data/prepared/test.npz", allow_pickle=False) as z:
            bodies = [json.dumps({"inputs": z["x"][i : i + 1].tolist()}).encode()
                      for i in range(256)]  # fmt: skip
        server = scoring_service(project, env)
        with server as proc:
            url = f"{server.url}/invocations"
            rss = lambda: psutil.Process(proc.pid).memory_info().rss / 2**20  # noqa: E731
            drive(url, lambda i: bodies[i % 256], 16, seconds=1.0)  # warm-up
            capacity = drive(url, lambda i: bodies[i % 256], 16, seconds=3.0).throughput
            print(f"capacity (16 clients, closed loop): {capacity:.0f} req/s; "
                  f"resident memory {rss():.0f} MB\n")  # fmt: skip
            print(
                "| load | offered req/s | achieved | accepted req/s | accepted p50 / p99 ms "
                "| refused (503) | refused p99 ms | failed | memory MB | next 20 p99 ms |"
            )
            print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
            for times in (2, 5):
                rate = times * capacity
                load = drive_rate(url, lambda i: bodies[i % 256], rate, args.seconds)
                ok = [a.latency_s for a in load.answers if a.status == 200]
                refused = [a.latency_s for a in load.answers if a.status == 503]
                failed = sum(1 for a in load.answers if a.status not in (200, 503))
                memory = rss()
                time.sleep(0.2)
                after = drive(url, lambda i: bodies[i % 256], 1, requests=20)
                print(f"| {times}× | {rate:.0f} | {len(load.answers) / load.seconds:.0f} | "
                      f"{len(ok) / load.seconds:.0f} | {percentile(ok, 50):.1f} / "
                      f"{percentile(ok, 99):.1f} | {len(refused)} | "
                      f"{percentile(refused, 99):.1f} | {failed} | {memory:.0f} | "
                      f"{after.percentile(99):.1f} ({after.errors} errors) |",
                      flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
