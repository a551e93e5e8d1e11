"""A new project used by several processes at once loses nothing: the local MLflow store is
created once, whoever comes first (pipeline/core/locks.py)."""

import pytest

from pipeline.testing.first_use import race

pytestmark = pytest.mark.slow

# Without the creation lock 60 of 80 processes failed (RELIABILITY.md), at most 4 a round:
# at least 15 of the 20 rounds failed, so 5 rounds would all pass without it about once in
# a thousand (0.25**5). Each round costs a new store's migrations (~4 s); the 20-round
# figure is `python -m benchmarks.first_use`'s.
ROUNDS = 5


def test_processes_opening_a_new_store_at_once_all_record_their_run(tmp_path):
    """4 processes, released by a barrier, open a store that does not exist yet, round
    after round: without the creation lock MLflow's migrations ran against each other (an
    Alembic "0 rows matched" error, "duplicate column name: step")."""
    rounds = race(tmp_path, processes=4, rounds=ROUNDS)
    failed = [f"{r.folder.name}: {line}" for r in rounds for line in r.failed]
    assert failed == []
    assert [r.runs for r in rounds] == [4] * ROUNDS  # 0 lost runs
