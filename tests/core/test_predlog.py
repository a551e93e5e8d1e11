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
