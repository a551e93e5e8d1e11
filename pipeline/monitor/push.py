"""The monitor's verdict as Prometheus gauges, pushed to a Pushgateway (``--push URL``).

A monitor run is a batch job: Prometheus cannot scrape it, so it pushes its last verdict
to Prometheus' Pushgateway (the standard route for batch jobs), grouped by job and model,
so that each run replaces the previous one and the alert rules in
docs/operations/alerts.yml read the latest. Names by Prometheus' conventions: ratios in
0-1 end in ``_ratio``, times in seconds.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from pipeline.core.errors import PipelineError, first_line

JOB = "pipeline_monitor"


def registry_of(out: Mapping[str, Any], max_drop_points: float, now: float | None = None):
    """The gauges of one monitor report (``report.json``'s content) in a fresh registry."""
    registry = CollectorRegistry()
    labels = {"model": out["model_name"], "version": str(out["model_version"])}
    acc = out["accuracy"]

    def gauge(name: str, doc: str, value: float) -> None:
        Gauge(name, doc, list(labels), registry=registry).labels(**labels).set(value)

    gauge("monitor_drift_detected", "1 if the last monitor run detected drift, else 0",
          float(bool(out["drift"]["detected"])))  # fmt: skip
    gauge("monitor_drift_share_ratio", "Share of the drift tests that drifted",
          out["drift"]["share"])  # fmt: skip
    gauge("monitor_estimated_accuracy_ratio", "Accuracy estimated without labels (ATC)",
          acc["estimated"])  # fmt: skip
    gauge("monitor_reference_accuracy_ratio", "The version's accuracy on validation",
          acc["reference"])  # fmt: skip
    gauge("monitor_accuracy_max_drop_ratio", "monitor.max_drop: the estimated accuracy may "
          "fall this far below validation", max_drop_points / 100)  # fmt: skip
    if acc.get("labeled") is not None:
        gauge("monitor_labeled_accuracy_ratio", "Accuracy on the images users labelled",
              acc["labeled"])  # fmt: skip
    gauge("monitor_images", "Images in the last monitor run's window", out["images"])
    gauge("monitor_last_run_timestamp_seconds", "When the last monitor run ended",
          now if now is not None else time.time())  # fmt: skip
    return registry


def push(url: str, out: Mapping[str, Any], max_drop_points: float) -> None:
    """Replace this model's last verdict on the Pushgateway at ``url``; one-line error."""
    from prometheus_client import push_to_gateway

    registry = registry_of(out, max_drop_points)
    try:
        push_to_gateway(url, job=JOB, registry=registry, grouping_key={"model": out["model_name"]},
                        timeout=10)  # fmt: skip
    except OSError as e:  # URLError, connection refused, timeouts
        raise PipelineError(f"cannot push the verdict to the Pushgateway {url}: "
                            f"{first_line(e)}") from None  # fmt: skip
