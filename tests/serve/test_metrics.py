"""The Prometheus exposition: names by Prometheus' conventions, buckets down to 1 ms."""

import pytest

from pipeline.serve import metrics


def test_exposition_names_and_buckets():
    metrics.REQUESTS.labels(endpoint="invocations", status="200").inc()
    metrics.LATENCY.labels(endpoint="invocations").observe(0.0004)
    metrics.count_digits([3, 3, 7])
    metrics.VERSION.set(4)
    body, content_type = metrics.exposition()
    text = body.decode()
    assert content_type.startswith("text/plain")
    assert 'serve_request_duration_seconds_bucket{endpoint="invocations",le="0.001"} 1.0' in text
    assert 'serve_predictions_total{digit="3"}' in text
    assert "serve_model_version 4.0" in text
    for name in ("serve_requests_total", "serve_batch_size_images", "serve_model_reloads_total"):
        assert f"# TYPE {name.removesuffix('_total')}" in text


@pytest.mark.slow
def test_two_workers_share_the_load_and_sum_their_metrics(smoke_project, tmp_path):
    """--workers 2: both processes answer, /metrics on either counts every request
    (prometheus-client's multiprocess mode), SIGTERM stops both, the log has every row."""
    import json
    import signal
    import sqlite3
    import urllib.request

    import numpy as np

    from pipeline.testing.load import drive
    from pipeline.testing.project import clone_of, scoring_service, stage_env

    project = clone_of(smoke_project, tmp_path)
    with np.load(project / "data/prepared/test.npz", allow_pickle=False) as z:
        body = json.dumps({"inputs": z["x"][:2].tolist()}).encode()
    server = scoring_service(project, stage_env(), "--workers", "2")
    with server as proc:
        load = drive(f"{server.url}/invocations", lambda i: body, concurrency=8, requests=80)
        assert load.errors == 0
        with urllib.request.urlopen(f"{server.url}/metrics") as resp:
            text = resp.read().decode()
        line = 'serve_requests_total{endpoint="invocations",status="200"} '
        assert f"{line}80.0" in text, [ln for ln in text.splitlines() if "requests_total" in ln]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    with sqlite3.connect(project / "predictions.db") as db:
        assert db.execute("SELECT count(*) FROM predictions").fetchone()[0] == 160
