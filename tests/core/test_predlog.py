"""Where the prediction log lives, and one line when it cannot be reached."""

import pytest

from pipeline.core.predlog import LogError, log_url, open_engine


def test_url_env_wins_and_bad_schemes_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert log_url(None, env={}) == f"sqlite:///{tmp_path.resolve() / 'predictions.db'}"
    assert log_url("sqlite:////x/p.db", env={}) == "sqlite:////x/p.db"
    assert log_url(None, env={"PREDICTION_LOG_URL": "postgresql://u@h/db"}).startswith(
        "postgresql+psycopg2://"
    )
    with pytest.raises(LogError, match="sqlite:/// or postgresql://"):
        log_url("mysql://h/db", env={})


def test_an_unreachable_postgresql_log_is_one_line(tmp_path):
    from pipeline.testing.project import free_port

    url = f"postgresql+psycopg2://nobody@127.0.0.1:{free_port()}/log"
    with pytest.raises(LogError) as e:
        open_engine(url)
    assert "\n" not in str(e.value) and "127.0.0.1" in str(e.value)


def test_labels_are_read_up_to_a_time_and_counted_without_revoked_keys(tmp_path):
    import datetime

    import sqlalchemy as sa

    from pipeline.core.predlog import (
        count_labels,
        feedback,
        feedback_keys,
        predictions,
        read_labels,
        revoked_senders,
    )

    engine = open_engine(f"sqlite:///{tmp_path / 'log.db'}")
    t0 = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)
    at = [t0 + datetime.timedelta(hours=h) for h in range(4)]
    with engine.begin() as conn:
        conn.execute(
            predictions.insert(),
            [
                {
                    "request_id": f"r{i}",
                    "position": 0,
                    "ts": t0,
                    "endpoint": "invocations",
                    "model_version": "1",
                    "digit": 1,
                    "probability": 0.9,
                    "probabilities": [0.1] * 10,
                    "pixels": None if i == 2 else bytes(784),
                    "latency_ms": 1.0,
                }
                for i in range(3)
            ],
        )
        conn.execute(
            feedback_keys.insert(),
            [
                {"name": "alice", "key_sha256": "a" * 64, "created": t0, "revoked": None},
                {"name": "mallory", "key_sha256": "m" * 64, "created": t0, "revoked": at[1]},
            ],
        )
        conn.execute(
            feedback.insert(),
            [
                {"request_id": "r0", "position": 0, "digit": 3, "ts": at[1], "sender": "alice"},
                {"request_id": "r1", "position": 0, "digit": 4, "ts": at[2], "sender": "mallory"},
                {"request_id": "r2", "position": 0, "digit": 5, "ts": at[3], "sender": "alice"},
            ],
        )
    got = read_labels(engine, until=at[2])
    assert [(x.request_id, x.sender, x.digit) for x in got] == [
        ("r0", "alice", 3),
        ("r1", "mallory", 4),
    ]
    assert got[0].ts == at[1] and got[0].pixels == bytes(784)
    assert revoked_senders(engine) == {"mallory"}
    assert count_labels(engine, None) == 2 and count_labels(engine, at[1]) == 1
    assert read_labels(engine, until=at[3])[-1].pixels is None  # logged without pixels
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE feedback_keys"))
    with pytest.raises(LogError, match="revoked keys unreadable"):
        revoked_senders(engine)
