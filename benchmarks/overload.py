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

    python -m benchmarks.overload --h2load         # ~1 min; Debian's nghttp2-client

The same phases with h2load, an open-loop client in C (each request on a new connection,
``rate`` connections a second, whether or not the earlier ones were answered: the
client keeps up where the asyncio one cannot), first straight at the service, then
through the shipped HAProxy config (docs/operations/haproxy.cfg: 16 requests in flight a
replica, 4 ms in HAProxy's queue, then 503). Its two server lines both point at the one
service here, each with ``maxconn 8``: the 16 in flight the config gives each replica.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import yaml

from benchmarks.serve import announce, champion_project
from pipeline.testing.haproxy import CONFIG, haproxy
from pipeline.testing.load import drive, drive_rate
from pipeline.testing.project import run, scoring_service, set_params


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q) * 1000) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--max-queue-ms", type=float, default=None,
                        help="serve.max_queue_ms for the run (default: params.yaml's)")  # fmt: skip
    parser.add_argument("--h2load", action="store_true",
                        help="h2load as the client, straight and through HAProxy")  # fmt: skip
    args = parser.parse_args()
    if args.h2load:
        return main_h2load(args.seconds)
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


def h2load(url: str, body: Path, rate: float, seconds: float) -> tuple[list, float]:
    """(status, seconds) of each request of an open loop, ``rate`` new connections a
    second for ``seconds``, one request each (status -1: failed); and the seconds from the
    first request sent to the last answer."""
    n = int(rate * seconds)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "requests.tsv"
        subprocess.run(
            ["h2load", "--h1", "-n", str(n), "-c", str(n), "-r", str(max(1, round(rate / 100))),
             "--rate-period", "10ms", "-H", "Content-Type: application/json", "-d", str(body),
             "--log-file", str(log), url],
            capture_output=True, check=True, timeout=seconds * 20 + 60,
        )  # fmt: skip
        rows = [[int(c) for c in line.split("\t")[:3]] for line in log.read_text().splitlines()]
    span = (max(r[0] + r[2] for r in rows) - min(r[0] for r in rows)) / 1e6
    return [(r[1], r[2] / 1e6) for r in rows], span


def main_h2load(seconds: float) -> None:
    if not shutil.which("h2load"):
        raise SystemExit("h2load not found: apt-get install nghttp2-client")
    env = announce("overload (h2load)")
    with tempfile.TemporaryDirectory(prefix="bench-overload-") as tmp:
        project = champion_project(Path(tmp), env)
        with np.load(project / "data/prepared/test.npz", allow_pickle=False) as z:
            body = Path(tmp) / "one-image.json"
            body.write_text(json.dumps({"inputs": z["x"][:1].tolist()}))
        config = Path(tmp) / "haproxy.cfg"  # both server lines on the one service
        config.write_text(CONFIG.read_text().replace("maxconn 16", "maxconn 8"))
        server = scoring_service(project, env)
        with server as proc:
            lb = haproxy(Path(tmp), [server.port, server.port], config)
            with lb:
                _phases(server.url, lb.url, body, seconds, proc.pid)


def _phases(url: str, lb_url: str, body: Path, seconds: float, pid: int) -> None:
    rss = lambda: psutil.Process(pid).memory_info().rss / 2**20  # noqa: E731
    done = subprocess.run(
        ["h2load", "--h1", "-n", "8000", "-c", "16", "-H", "Content-Type: application/json",
         "-d", str(body), f"{url}/invocations"], capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    capacity = float(done.split(" req/s")[0].rsplit(" ", 1)[-1])  # "finished in 7s, 1100.5 req/s"
    print(f"capacity (16 keep-alive clients, closed loop, h2load): {capacity:.0f} req/s; "
          f"resident memory {rss():.0f} MB\n")  # fmt: skip
    print(
        "| to | load | offered req/s | accepted req/s (to the last answer) "
        "| accepted p50 / p99 ms "
        "| refused (503) | refused p50 / p99 ms | failed | memory MB |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for to, target in (("service", url), ("HAProxy", lb_url)):
        for times in (2, 5):
            rate = times * capacity
            answers, span = h2load(f"{target}/invocations", body, rate, seconds)
            ok = [t for status, t in answers if status == 200]
            refused = [t for status, t in answers if status == 503]
            failed = sum(1 for status, _ in answers if status not in (200, 503))
            print(f"| {to} | {times}× | {rate:.0f} | {len(ok) / span:.0f} | "
                  f"{percentile(ok, 50):.1f} / {percentile(ok, 99):.1f} | {len(refused)} | "
                  f"{percentile(refused, 50):.1f} / {percentile(refused, 99):.1f} | "
                  f"{failed} | {rss():.0f} |", flush=True)  # fmt: skip
            time.sleep(2)  # the phase's sockets closed


if __name__ == "__main__":
    main()
