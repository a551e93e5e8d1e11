"""Throwaway Prometheus and Pushgateway processes (Debian's ``prometheus`` and
``prometheus-pushgateway``) on free ports of 127.0.0.1, for the tests of the alert rules,
the dashboard's queries and the monitor's push."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from pipeline.testing.project import Server, free_port

BINARIES = ("prometheus", "promtool", "prometheus-pushgateway")  # for project.require


def pushgateway(workdir: Path) -> Server:
    """A Pushgateway (``.url``) that keeps nothing on disk."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = ["prometheus-pushgateway", f"--web.listen-address=127.0.0.1:{port}",
           "--persistence.file="]  # fmt: skip
    server = Server(cmd, workdir, {"PATH": "/usr/bin:/bin"}, f"{url}/-/ready")
    server.url = url
    return server


def prometheus(workdir: Path, targets: dict[str, list[str]], rules: list[Path],
               interval_s: float = 1.0) -> Server:  # fmt: skip
    """A Prometheus (``.url``) scraping ``targets`` (job -> ["host:port", ...]) and
    evaluating ``rules`` every ``interval_s``; its data in ``workdir``."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    every = f"{round(interval_s * 1000)}ms"  # (Prometheus reads "1s", not "1.0s")
    config = {
        "global": {"scrape_interval": every, "evaluation_interval": every},
        "rule_files": [str(r) for r in rules],
        "scrape_configs": [
            {"job_name": job, "honor_labels": job == "pushgateway",
             "static_configs": [{"targets": hosts}]}
            for job, hosts in targets.items()
        ],
    }  # fmt: skip
    path = workdir / "prometheus.yml"
    path.write_text(json.dumps(config))  # (YAML is a superset of JSON)
    cmd = ["prometheus", f"--config.file={path}", f"--web.listen-address=127.0.0.1:{port}",
           f"--storage.tsdb.path={workdir / 'data'}"]  # fmt: skip
    server = Server(cmd, workdir, {"PATH": "/usr/bin:/bin"}, f"{url}/-/ready")
    server.url = url
    return server


def api(url: str, path: str, **query: str) -> Any:
    """``data`` of a Prometheus HTTP API answer."""
    full = f"{url}/api/v1/{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    with urllib.request.urlopen(full, timeout=10) as resp:
        answer = json.loads(resp.read())
    assert answer["status"] == "success", answer
    return answer["data"]


def wait_for(check, timeout_s: float, poll_s: float = 0.5):
    """``check()``'s first truthy value within ``timeout_s``, else AssertionError."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {check.__doc__ or check}")
        time.sleep(poll_s)
