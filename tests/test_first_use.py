"""A new project used by several processes at once loses nothing: the local MLflow store is
created once, whoever comes first (pipeline/core/locks.py)."""

import pytest

from pipeline.testing.first_use import race

pytestmark = pytest.mark.slow


def test_processes_opening_a_new_store_at_once_all_record_their_run(tmp_path):
    """4 processes, released by a barrier, open a store that does not exist yet, 20 rounds:
    without the creation lock MLflow's migrations ran against each other (an Alembic
    "0 rows matched" error, "duplicate column name: step")."""
    rounds = race(tmp_path, processes=4, rounds=20)
    failed = [f"{r.folder.name}: {line}" for r in rounds for line in r.failed]
    assert failed == []
    assert [r.runs for r in rounds] == [4] * 20  # 0 lost runs
