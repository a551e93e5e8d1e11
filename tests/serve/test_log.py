"""The prediction log: rows written in batches off the request path, all of them at close;
its URL; feedback."""

import datetime

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
