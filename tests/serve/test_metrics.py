"""The Prometheus exposition: names by Prometheus' conventions, buckets down to 1 ms."""

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
