"""The service's Prometheus metrics (prometheus-client), named by Prometheus' conventions.

With ``--workers N`` each worker is its own process: prometheus-client's multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR``, set by ``pipeline.serve`` before the workers start) sums
their counters and histograms, so ``GET /metrics`` on any worker reports the service.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

REQUESTS = Counter(
    "serve_requests_total", "HTTP requests answered, by endpoint and status code",
    ["endpoint", "status"],
)  # fmt: skip
LATENCY = Histogram(
    "serve_request_duration_seconds", "Time from a request's arrival to its answer",
    ["endpoint"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
)  # fmt: skip
BATCH = Histogram(
    "serve_batch_size_images", "Images per forward pass (across concurrent requests)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)  # fmt: skip
PREDICTIONS = Counter("serve_predictions_total", "Images answered, by predicted digit", ["digit"])
VERSION = Gauge(
    "serve_model_version", "The registered model version being served",
    multiprocess_mode="livemax",
)  # fmt: skip
RELOADS = Counter(
    "serve_model_reloads_total", "Attempts to follow the alias to a new version, by result",
    ["result"],
)  # fmt: skip
LOG_ROWS = Counter("serve_prediction_log_rows_total", "Rows written to the prediction log")


def exposition() -> tuple[bytes, str]:
    """(body, content type) of ``GET /metrics``: this process's metrics, or every worker's
    in multiprocess mode."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


def count_digits(digits) -> None:
    """Add a batch's predicted digits to ``serve_predictions_total``."""
    import numpy as np

    for digit, n in zip(*np.unique(digits, return_counts=True), strict=True):
        PREDICTIONS.labels(digit=str(int(digit))).inc(int(n))
