"""The prediction log: rows written in batches off the request path, all of them at close;
its URL; feedback."""

import datetime

import pytest
import sqlalchemy as sa

from pipeline.serve.log import PredictionLog, count_rows, open_engine, store_feedback


def row(i: int) -> dict:
    return {
        "request_id": f"r{i}", "position": 0, "ts": datetime.datetime.now(datetime.UTC),
        "endpoint": "invocations", "model_version": "1", "digit": i % 10, "probability": 0.9,
        "probabilities": [0.01] * 10, "pixels": bytes(784), "latency_ms": 1.0,
    }  # fmt: skip


def test_every_queued_row_is_written_by_close(tmp_path):
    url = f"sqlite:///{tmp_path / 'predictions.db'}"
    plog = PredictionLog(open_engine(url), flush_s=10)  # no timed flush before close
    plog.add([row(i) for i in range(1234)], 1234)
    plog.close()
    assert plog.written == count_rows(url) == 1234


def test_rows_are_flushed_while_serving(tmp_path):
    import time

    url = f"sqlite:///{tmp_path / 'predictions.db'}"
    plog = PredictionLog(open_engine(url), flush_s=0.05)
    plog.add([row(1), row(2)], 2)
    deadline = time.monotonic() + 5
    while count_rows(url) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert count_rows(url) == 2
    plog.close()


def test_feedback_rows(tmp_path):
    engine = open_engine(f"sqlite:///{tmp_path / 'p.db'}")
    store_feedback(engine, "abc", 0, 7)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT request_id, digit FROM feedback")).all() == [("abc", 7)]


@pytest.mark.slow
def test_two_replicas_under_load_share_one_postgresql_log(smoke_project, postgres, tmp_path):
    """Two service processes (as behind a load balancer) write one PostgreSQL log; SIGTERM
    mid-load: each drains, flushes and exits 0, and the log has one row per image
    answered, no more, no less."""
    import json
    import signal
    import threading
    import time

    import numpy as np

    from pipeline.testing.load import drive
    from pipeline.testing.project import clone_of, scoring_service, stage_env

    project = clone_of(smoke_project, tmp_path)
    url = postgres.create_database("predictions")
    env = stage_env(PREDICTION_LOG_URL=url)
    with np.load(project / "data/prepared/test.npz", allow_pickle=False) as z:
        x = z["x"][:200]
    bodies = [json.dumps({"inputs": x[i : i + 1 + i % 5].tolist()}).encode() for i in range(100)]
    a, b = scoring_service(project, env), scoring_service(project, env)
    with a as proc_a, b as proc_b:
        result = {}
        loader = threading.Thread(target=lambda: result.setdefault("load", drive(
            "", lambda i: bodies[i % 100], concurrency=8, seconds=20, keep_body=True,
            urls=[f"{a.url}/invocations", f"{b.url}/invocations"])))  # fmt: skip
        loader.start()
        time.sleep(4)
        proc_a.send_signal(signal.SIGTERM)  # one replica leaves mid-load...
        assert proc_a.wait(timeout=30) == 0
        loader.join(timeout=60)
        proc_b.send_signal(signal.SIGTERM)  # ...the other after it
        assert proc_b.wait(timeout=30) == 0
    load = result["load"]
    answered = [a for a in load.answers if a.status == 200]
    refused = [a for a in load.answers if a.status != 200]
    assert len(answered) > 100 and all(a.status == 0 for a in refused)  # no 5xx, no 4xx
    want = sum(len(json.loads(ans.body)["predictions"]) for ans in answered)
    assert count_rows(url) == want > 0
