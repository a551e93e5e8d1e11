"""The service's Prometheus metrics (prometheus-client), named by Prometheus' conventions.

With ``--workers N`` each worker is its own process: prometheus-client's multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR``, set by ``pipeline.serve`` before the workers start) sums
their counters and histograms, so ``GET /metrics`` on any worker reports the service.
"""

from __future__ import annotations

import os
from typing import Any

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
PREDICTIONS = Counter("serve_predictions_total", "Images predicted, by digit", ["digit"])
_DIGITS = [PREDICTIONS.labels(digit=str(d)) for d in range(10)]  # (labels() takes a lock)
VERSION = Gauge(
    "serve_model_version", "The registered model version being served",
    multiprocess_mode="livemax",
)  # fmt: skip
RELOADS = Counter(
    "serve_model_reloads_total", "Attempts to follow the alias to a new version, by result",
    ["result"],
)  # fmt: skip
QUEUE = Gauge(
    "serve_queue_images", "Images waiting for a forward pass", multiprocess_mode="livesum"
)
QUEUE_WAIT = Histogram(
    "serve_queue_wait_seconds", "Time a request waited in the queue for its batch",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
)  # fmt: skip
REJECTED = Counter(
    "serve_rejected_total", "Requests refused with 503 by the admission bounds, by reason",
    ["reason"],
)  # fmt: skip
for _reason in ("queue_full", "expected_wait", "waited"):  # 0 before the first: rate() works
    REJECTED.labels(reason=_reason)
LOG_ROWS = Counter("serve_prediction_log_rows_total", "Rows written to the prediction log")
LOG_BACKLOG = Gauge(
    "serve_prediction_log_backlog_rows", "Rows answered but not yet in the prediction log",
    multiprocess_mode="livesum",
)  # fmt: skip
LOG_DROPPED = Counter(
    "serve_log_dropped_total", "Images answered but not logged: the spool could not take them"
)
LOG_FAILURES = Counter(
    "serve_prediction_log_write_failures_total", "Failed writes to the prediction log (retried)"
)


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

    for digit, n in enumerate(np.bincount(np.asarray(digits, np.int64), minlength=10).tolist()):
        if n:
            _DIGITS[digit].inc(n)


_requests: dict[tuple[str, str], Any] = {}
_latency: dict[str, Any] = {}


def answered(endpoint: str, status: int, seconds: float) -> None:
    """Count a request and observe its latency (the labelled children are looked up once)."""
    key = (endpoint, str(status))
    if (requests := _requests.get(key)) is None:
        requests = _requests[key] = REQUESTS.labels(endpoint=endpoint, status=key[1])
    if (latency := _latency.get(endpoint)) is None:
        latency = _latency[endpoint] = LATENCY.labels(endpoint=endpoint)
    requests.inc()
    latency.observe(seconds)
