"""docs/operations/: the alert rules pass promtool's unit tests, the dashboard is Grafana's
JSON, and end to end a real Prometheus scrapes the real service and the real HAProxy in
front of it (the shipped haproxy.cfg), the monitor pushes its verdict on Fashion-MNIST
traffic to a real Pushgateway, the drift alert fires, and every query of the dashboard
returns data."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from pipeline.testing import prometheus as prom
from pipeline.testing.haproxy import haproxy
from pipeline.testing.project import (
    ROOT,
    clone_of,
    fashion_images,
    require,
    run,
    scoring_service,
)

OPS = ROOT / "docs" / "operations"
RULES = OPS / "alerts.yml"


def dashboard_queries() -> list[str]:
    dash = json.loads((OPS / "dashboard.json").read_text())
    return [t["expr"] for panel in dash["panels"] for t in panel["targets"]]


def test_the_alert_rules_pass_promtool():
    require(*prom.BINARIES)
    checked = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True,
                             text=True)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(["promtool", "test", "rules", "alerts.test.yml"], cwd=OPS,
                            capture_output=True, text=True)  # fmt: skip
    assert tested.returncode == 0, tested.stdout + tested.stderr
    names = {line.split(":")[1].strip() for line in RULES.read_text().splitlines()
             if line.strip().startswith("- alert:")}  # fmt: skip
    tests = (OPS / "alerts.test.yml").read_text()
    assert all(f"alertname: {n}" in tests for n in names)  # each alert has a test
    assert {
        "ScoringServiceDown", "ScoringServiceErrors", "ScoringServiceSlow",
        "ScoringServiceShedding", "ModelReloadFailing", "PredictionLogBacklog",
        "ModelDriftDetected", "ModelAccuracyDrop", "ScoringServiceNoTraffic",
        "PredictionLogDropping", "EdgeRefusing", "EdgeReplicaDown", "EdgeNoReplica",
    } <= names  # fmt: skip


def test_the_dashboard_is_grafana_json_over_the_services_metrics():
    queries = " ".join(dashboard_queries())
    for metric in ("serve_requests_total", "serve_request_duration_seconds_bucket",
                   "serve_batch_size_images", "serve_model_version", "serve_rejected_total",
                   "monitor_drift_share_ratio", "monitor_estimated_accuracy_ratio",
                   "haproxy_frontend_http_responses_total"):  # fmt: skip
        assert metric in queries, metric


def _traffic(url: str, x) -> None:
    """``x`` in requests of 10 images, and one bad request (a 400 for the errors panel)."""
    for i in range(0, len(x), 10):
        body = json.dumps({"inputs": x[i : i + 10].tolist()}).encode()
        req = urllib.request.Request(f"{url}/invocations", body,
                                     {"Content-Type": "application/json"})  # fmt: skip
        urllib.request.urlopen(req, timeout=30).close()
    bad = urllib.request.Request(f"{url}/invocations", b"{", {"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(bad, timeout=30)


@pytest.mark.slow
def test_prometheus_fires_the_drift_alert_on_fashion_traffic(smoke_project, tmp_path):
    fashion = () if fashion_images() is not None else ("dataset-fashion-mnist",)
    require(*prom.BINARIES, "haproxy", also_missing=fashion)
    project = clone_of(smoke_project, tmp_path / "p")
    (tmp_path / "prom").mkdir()
    service, gateway = scoring_service(project), prom.pushgateway(tmp_path)
    with service, gateway:
        lb = haproxy(tmp_path, [service.port, service.port])  # the traffic comes through it
        targets = {"lenet5-serve": [f"127.0.0.1:{service.port}"],
                   "pushgateway": [gateway.url.removeprefix("http://")],
                   "haproxy": [lb.metrics_url.split("/")[2]]}  # fmt: skip
        prometheus = prom.prometheus(tmp_path / "prom", targets, [RULES])
        with lb, prometheus:
            _traffic(lb.url, fashion_images()[:500])
            monitor = run([sys.executable, "-m", "pipeline.monitor", "--last", "500", "--push",
                           gateway.url, "--out", "fashion"], project, check=False)  # fmt: skip
            assert monitor.returncode == 0, monitor.stderr[-2000:]
            assert "verdict pushed" in monitor.stderr

            def drift_alert_firing():
                """ModelDriftDetected firing in Prometheus' /api/v1/alerts"""
                return [a for a in prom.api(prometheus.url, "alerts")["alerts"]
                        if a["labels"]["alertname"] == "ModelDriftDetected"
                        and a["state"] == "firing"]  # fmt: skip

            (alert,) = prom.wait_for(drift_alert_firing, timeout_s=30)
            assert alert["labels"]["model"] == "lenet5-mnist"
            for query in dashboard_queries():  # Grafana cannot run here: its queries can
                result = prom.wait_for(
                    lambda q=query: prom.api(prometheus.url, "query", query=q)["result"], 20
                )
                assert result, query
