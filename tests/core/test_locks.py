"""The file lock beside a local store: exclusive across processes, released by a death."""

import subprocess
import sys
import time
from pathlib import Path

from pipeline.core.locks import file_lock, sqlite_path


def test_sqlite_path_of_a_url_and_none_for_other_stores():
    assert sqlite_path("sqlite:////work/p/mlflow.db?timeout=60") == Path("/work/p/mlflow.db")
    assert sqlite_path("postgresql://u@h/db") is None
    assert sqlite_path("http://127.0.0.1:5000") is None


HOLD = """
import sys, time
from pathlib import Path
from pipeline.core.locks import file_lock
with file_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_a_second_process_waits_until_the_holder_releases_or_dies(tmp_path):
    db = tmp_path / "mlflow.db"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(db), "3.0"], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "held"
    start = time.monotonic()
    with file_lock(db):
        waited = time.monotonic() - start
    holder.wait(timeout=10)
    assert waited > 0.5  # it waited for the holder (3 s, less the time to see "held")
    assert (tmp_path / "mlflow.db.lock").exists()

    killed = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(db), "60"], stdout=subprocess.PIPE, text=True
    )
    assert killed.stdout.readline().strip() == "held"
    killed.kill()
    killed.wait(timeout=10)
    start = time.monotonic()
    with file_lock(db):  # the kernel released the dead holder's lock
        assert time.monotonic() - start < 5
