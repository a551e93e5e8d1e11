"""A throwaway HAProxy (Debian's ``haproxy``) on a free port of 127.0.0.1, running the
shipped example config (docs/operations/haproxy.cfg) over two scoring-service replicas."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

from pipeline.testing.project import ROOT, Server, free_port

CONFIG = ROOT / "docs" / "operations" / "haproxy.cfg"


def haproxy(workdir: Path, replicas: list[int], config: Path = CONFIG) -> Server:
    """HAProxy (``.url``) balancing the replicas on these ports of 127.0.0.1, its
    Prometheus exporter at ``.metrics_url``; ready when its own ``monitor-uri`` answers."""
    port, metrics = free_port(), free_port()
    env = {"PATH": "/usr/sbin:/usr/bin:/bin", "LISTEN": f"127.0.0.1:{port}",
           "METRICS_LISTEN": f"127.0.0.1:{metrics}"}  # fmt: skip
    env.update({f"SERVE_{i + 1}": f"127.0.0.1:{p}" for i, p in enumerate(replicas)})
    cmd = [shutil.which("haproxy") or "haproxy", "-db", "-f", str(config)]  # -db: foreground
    server = Server(cmd, workdir, env, f"http://127.0.0.1:{port}/haproxy/health")
    server.url = f"http://127.0.0.1:{port}"
    server.metrics_url = f"http://127.0.0.1:{metrics}/metrics"
    return server


def servers_up(server: Server) -> set[str]:
    """The backend's servers HAProxy has in rotation now (``serve-1``, ``serve-2``), from
    its exporter's ``haproxy_server_status{state="UP"}``."""
    import urllib.request

    with urllib.request.urlopen(server.metrics_url, timeout=5) as resp:
        text = resp.read().decode()
    found = re.findall(r'^haproxy_server_status\{proxy="replicas",server="([^"]+)",state="UP"\} 1$',
                       text, re.MULTILINE)  # fmt: skip
    return set(found)


def wait_up(server: Server, names: set[str], timeout_s: float = 60.0) -> float:
    """Wait until HAProxy has every server in ``names`` in rotation (its checks passed
    ``rise`` times), as an operator waits before restarting the next replica; the
    seconds it took. TimeoutError when it does not."""
    start = time.monotonic()
    while not names <= servers_up(server):
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"HAProxy has {sorted(servers_up(server))} up, not {sorted(names)}")
        time.sleep(0.1)
    return time.monotonic() - start
