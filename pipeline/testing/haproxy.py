"""A throwaway HAProxy (Debian's ``haproxy``) on a free port of 127.0.0.1, running the
shipped example config (docs/operations/haproxy.cfg) over two scoring-service replicas."""

from __future__ import annotations

import shutil
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
