"""Where the study lives and the lock its workers share."""

import threading
import time

import pytest

from pipeline.tune.storage import STORAGE_ENV, StudyLock, TuneError, open_storage, storage_url


def test_storage_url_defaults_to_sqlite_at_the_project_root(tmp_path, monkeypatch):
    copy = tmp_path / ".dvc" / "tmp" / "exps" / "tmp123"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    assert storage_url({}) == f"sqlite:///{tmp_path.resolve() / 'optuna.db'}"
    assert storage_url({STORAGE_ENV: "  "}) == f"sqlite:///{tmp_path.resolve() / 'optuna.db'}"


def test_storage_url_from_the_environment():
    assert storage_url({STORAGE_ENV: "postgres://u:p@db/optuna"}) == (
        "postgresql+psycopg2://u:p@db/optuna"
    )
    assert storage_url({STORAGE_ENV: "postgresql://db/o"}) == "postgresql+psycopg2://db/o"
    assert storage_url({STORAGE_ENV: " sqlite:////x/o.db "}) == "sqlite:////x/o.db"


def test_storage_url_reads_os_environ(monkeypatch):
    monkeypatch.setenv(STORAGE_ENV, "sqlite:////elsewhere/o.db")
    assert storage_url() == "sqlite:////elsewhere/o.db"


@pytest.mark.parametrize(
    "url", ["mysql://u:secret@db/o", "sqlite://", "sqlite:/rel.db", "redis://h", "optuna.db"]
)
def test_open_storage_rejects_other_schemes(url):
    with pytest.raises(TuneError, match=f"^{STORAGE_ENV}=.*: use sqlite:/// or postgresql://"):
        open_storage(url, heartbeat_s=5, on_stale=lambda study, trial: None)


def test_open_storage_hides_credentials():
    with pytest.raises(TuneError) as e:
        open_storage("mysql://u:secret@db/o", heartbeat_s=5, on_stale=lambda s, t: None)
    assert "secret" not in str(e.value) and "***@db" in str(e.value)


def test_open_storage_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    rdb = open_storage(url, heartbeat_s=5, on_stale=lambda s, t: None)
    assert rdb.heartbeat_interval == 5 and rdb.grace_period == 15
    assert (tmp_path / "optuna.db").exists()
    rdb.engine.dispose()


def test_open_storage_failure_is_one_tune_error(tmp_path):
    url = f"sqlite:///{tmp_path / 'missing-dir' / 'optuna.db'}"
    with pytest.raises(TuneError, match="^optuna storage sqlite:///"):
        open_storage(url, heartbeat_s=5, on_stale=lambda s, t: None)


def test_study_lock_key_is_per_study():
    a = StudyLock("sqlite:////tmp/x.db", "a")
    assert a.engine is None
    assert a.key == StudyLock("sqlite:////tmp/y.db", "a").key
    assert a.key != StudyLock("sqlite:////tmp/x.db", "b").key


def test_study_lock_on_sqlite_is_exclusive(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}?timeout=60"
    events = []
    first_holds = threading.Event()
    release_first = threading.Event()

    def first():
        with StudyLock(url, "s").held():
            events.append("first in")
            first_holds.set()
            release_first.wait(5)
            events.append("first out")

    def second():
        first_holds.wait(5)
        with StudyLock(url, "s").held():
            events.append("second in")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    assert first_holds.wait(5)
    time.sleep(0.2)  # the second is blocked by now
    assert events == ["first in"]
    release_first.set()
    for t in threads:
        t.join(5)
    assert events == ["first in", "first out", "second in"]
    assert (tmp_path / "optuna.db.lock").exists()  # beside the database, query dropped


def test_study_lock_is_released_on_error(tmp_path):
    lock = StudyLock(f"sqlite:///{tmp_path / 'o.db'}", "s")
    with pytest.raises(RuntimeError), lock.held():
        raise RuntimeError
    done = threading.Event()

    def take():
        with lock.held():
            done.set()

    t = threading.Thread(target=take)
    t.start()
    t.join(2)
    assert done.is_set()
