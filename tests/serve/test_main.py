"""``python -m pipeline.serve`` run as a team runs it: two replicas behind a real HAProxy
(the shipped docs/operations/haproxy.cfg), one PostgreSQL prediction log, each replica
restarted in turn under load."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import threading
import time
import urllib.request

import numpy as np
import pytest

from pipeline.serve.log import count_rows
from pipeline.testing.haproxy import haproxy, wait_up
from pipeline.testing.load import drive
from pipeline.testing.project import (
    NO_SHEDDING,
    ROOT,
    clone_of,
    free_port,
    require,
    scoring_service,
    set_params,
    stage_env,
)

pytestmark = pytest.mark.slow


REFUSED_AT_THE_EDGE = 'haproxy_frontend_http_responses_total{proxy="scoring",code="5xx"}'
ANSWERED = 'haproxy_backend_http_responses_total{proxy="replicas",code="2xx"}'


def _scrape(url: str) -> dict[str, str]:
    """{series: value} of a Prometheus exposition."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    return dict(line.rsplit(" ", 1) for line in text.splitlines()
                if line and not line.startswith("#"))  # fmt: skip


def ready(url: str) -> int:
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def test_a_rolling_restart_behind_haproxy_fails_no_request_and_logs_every_answer(
    smoke_project, postgres, tmp_path
):
    """SIGTERM makes a replica report not ready at once while it still answers (serve.
    drain_s), HAProxy's health check takes it out, it stops and starts again; then the
    other. Under load all along: every request answered 200, and the shared log holds one
    row per image answered."""
    require("haproxy")
    project = clone_of(smoke_project, tmp_path / "p")
    set_params(project, serve__drain_s=1.5, **NO_SHEDDING)
    env = stage_env(PREDICTION_LOG_URL=postgres.create_database("rolling"))
    with np.load(project / "data/prepared/test.npz", allow_pickle=False) as z:
        x = z["x"][:200]
    bodies = [json.dumps({"inputs": x[i : i + 1 + i % 5].tolist()}).encode() for i in range(100)]
    ports = [free_port(), free_port()]
    with contextlib.ExitStack() as stack:
        replicas = [scoring_service(project, env, port=p) for p in ports]
        procs = [stack.enter_context(r) for r in replicas]
        lb = haproxy(tmp_path, ports)
        stack.enter_context(lb)
        stop, result = threading.Event(), {}
        loader = threading.Thread(target=lambda: result.setdefault("load", drive(
            f"{lb.url}/invocations", lambda i: bodies[i % 100], concurrency=8, seconds=60,
            keep_body=True, stop=stop)))  # fmt: skip
        both = {"serve-1", "serve-2"}
        wait_up(lb, both)
        loader.start()
        time.sleep(1.5)
        for i, port in enumerate(ports):
            procs[i].send_signal(signal.SIGTERM)
            # Not ready within a second, while it still answers (1.5 s of drain): asked
            # until then, as a loaded machine may take a moment to run the handler.
            deadline = time.monotonic() + 1.0
            while ready(replicas[i].url) != 503 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert procs[i].poll() is None and ready(replicas[i].url) == 503  # draining...
            assert procs[i].wait(timeout=30) == 0  # ...then stopped, its rows written
            replicas[i] = scoring_service(project, env, port=port)
            procs[i] = stack.enter_context(replicas[i])
            # Back in rotation before the next goes: HAProxy's checks (rise 2, every
            # 500 ms) took 1.5 s and more on a loaded machine, and with both out HAProxy
            # answers 503 itself (a CI run saw it).
            wait_up(lb, both)
        stop.set()
        loader.join(timeout=60)
    load = result["load"]
    failed = [(a.status, a.body[:200]) for a in load.answers if a.status != 200]
    assert len(load.answers) > 200 and not failed, failed[:5]
    images = sum(len(json.loads(a.body)["predictions"]) for a in load.answers)
    assert count_rows(env["PREDICTION_LOG_URL"]) == images


def test_haproxy_sheds_what_the_replicas_cannot_take_with_the_services_own_503(
    smoke_project, tmp_path
):
    """16 requests in flight a replica (the shipped config), one more in HAProxy's queue for
    4 ms, the rest at once: 503 with Retry-After and the service's JSON. The replica is
    stopped (SIGSTOP) for a moment so that the requests pile up deterministically; nothing
    else is lost."""
    require("haproxy")
    project = clone_of(smoke_project, tmp_path / "p")
    with np.load(project / "data/prepared/test.npz", allow_pickle=False) as z:
        body = json.dumps({"inputs": z["x"][:1].tolist()}).encode()
    service = scoring_service(project)
    with service as proc:
        lb = haproxy(tmp_path, [service.port, service.port])  # 2 x 16 in flight on one
        with lb:
            answers, lock = [], threading.Lock()

            def send() -> None:
                req = urllib.request.Request(f"{lb.url}/invocations", body,
                                             {"Content-Type": "application/json"})  # fmt: skip
                start = time.monotonic()
                try:
                    with urllib.request.urlopen(req, timeout=60) as resp:
                        got = (resp.status, resp.headers, resp.read())
                except urllib.error.HTTPError as e:
                    got = (e.code, e.headers, e.read())
                with lock:
                    answers.append((*got, time.monotonic() - start))

            proc.send_signal(signal.SIGSTOP)
            try:
                senders = [threading.Thread(target=send) for _ in range(40)]
                for t in senders:
                    t.start()
                deadline = time.monotonic() + 5
                while len(answers) < 8 and time.monotonic() < deadline:
                    time.sleep(0.01)
                refused = list(answers)  # while the replica is stopped: HAProxy's own
            finally:
                proc.send_signal(signal.SIGCONT)
            for t in senders:
                t.join(timeout=60)
            # HAProxy counts a response when its stream ends, a moment after the client
            # has it: scrape until the 40 are counted (or 5 s).
            deadline = time.monotonic() + 5
            while True:
                samples = _scrape(lb.metrics_url)
                counted = (float(samples[REFUSED_AT_THE_EDGE]), float(samples[ANSWERED]))
                if (counted[0] >= 8 and counted[1] >= 32) or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
    assert len(refused) == 8, [a[:1] for a in refused]
    for status, headers, text, seconds in refused:
        assert status == 503 and headers["Retry-After"] == "1" and seconds < 2
        assert json.loads(text)["error_code"] == "TEMPORARILY_UNAVAILABLE"
    statuses = sorted(a[0] for a in answers)
    assert statuses == [200] * 32 + [503] * 8  # the 32 in flight answered once it ran again
    # HAProxy's exporter counts what no replica saw (alerts.yml's EdgeRefusing reads these),
    # and has every series the lenet5-edge rules name.
    assert counted == (8, 32)
    rules = (ROOT / "docs/operations/alerts.yml").read_text()
    for name in set(re.findall(r"\bhaproxy_\w+", rules)):
        assert any(series.startswith(name + "{") for series in samples), name
