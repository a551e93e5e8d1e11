"""Shared fixtures: the local MNIST mirror, a throwaway PostgreSQL server, and one real
`dvc repro` of the project on a slice that the slow tests share.

Helpers the benchmarks use too live in :mod:`pipeline.testing`; helpers that read MLflow
stores directly (an independent client, to check what the pipeline wrote) in
:mod:`tests.stores`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from filelock import FileLock

from pipeline.testing import postgres as pg
from pipeline.testing.project import (
    SHARED_MNIST,
    SMOKE,
    copy_project,
    free_port,
    run,
    set_params,
    stage_env,
)

# `make test`'s workers take test files in this order, the slowest first, so that no long
# file starts last and leaves two workers idle at the end (longest-processing-time-first).
# pytest-xdist's own order (--dist loadfile) puts the files with the most tests first, which
# put these, a few slow tests each, at the end. Seconds summed over a file's tests in a
# fresh-clone CI run at e488ff0 (3 workers, 2 cores, AMD EPYC): a guide, not a bound; files
# not listed follow in collection order. Each worker starts with one of the first three
# files: test_first_use and test_predict need no smoke project, so two workers run them
# while the third builds it (the others would wait on its lock, a core idle). test_register
# comes next: it builds the challenger project that test_champion and test_ui share.
SLOWEST_FIRST = (
    "tests/test_tracking_server.py",  # 295 s
    "tests/test_first_use.py",  # 26 s
    "tests/test_predict.py",  # 30 s
    "tests/test_register.py",  # 225 s (the challenger project's build included)
    "tests/tune/test_sweeps.py",  # 251 s
    "tests/test_experiments.py",  # 159 s
    "tests/test_reliability.py",  # 124 s
    "tests/test_retrain.py",  # 113 s
    "tests/serve/test_log.py",  # 100 s
    "tests/test_team_remote.py",  # 85 s
    "tests/test_report.py",  # 85 s
    "tests/test_train.py",  # 84 s
    "tests/serve/test_champion.py",  # 71 s
    "tests/test_ui.py",  # 68 s
    "tests/test_docs.py",  # 55 s
    "tests/monitor/test_main.py",  # 51 s
    "tests/serve/test_main.py",  # 40 s
    "tests/test_serving.py",  # 35 s
    "tests/test_operations.py",  # 28 s
    "tests/serve/test_app.py",  # 25 s
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slowest files first (SLOWEST_FIRST); a file's own tests keep their order."""
    rank = {path: i for i, path in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked ``bf16`` skip, with the one-line reason, where bf16 is not in hardware
    (the train stage's own check: no GPU, no AVX512_BF16/AMX-BF16, or oneDNN capped)."""
    if item.get_closest_marker("bf16"):
        from pipeline.core.training import precision_problem

        problem = precision_problem("mixed_bfloat16")
        if problem:
            pytest.skip(problem)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """../shared/mnist: the four official MNIST files (required in CI)."""
    if not (SHARED_MNIST / "train-images-idx3-ubyte.gz").exists():
        if os.environ.get("CI"):
            pytest.fail(f"{SHARED_MNIST} is missing: CI must provide the local MNIST mirror")
        pytest.skip(f"{SHARED_MNIST} not found")
    return SHARED_MNIST


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL server on a free port for the whole session (see
    pipeline/testing/postgres.py); tests take their own database with ``create_database``.

    Skips with one line where PostgreSQL is not installed, except under CI=true.
    """
    bin_dir = pg.bindir()
    if bin_dir is None or not (bin_dir / "initdb").exists():
        reason = "PostgreSQL server binaries (initdb, pg_ctl) not found; set PG_BINDIR"
        if os.environ.get("CI"):
            pytest.fail(reason + " (required in CI)")
        pytest.skip(reason)
    server = pg.PostgresServer(free_port(), bin_dir).init()
    server.start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def smoke_project(tmp_path_factory, mnist_dir) -> Path:
    """A copy of the project after one real `dvc repro` on a slice (2,000 images, 2 epochs).

    Shared by the tests that only read it; tests that change it work on a `clone_of` it.
    Under pytest-xdist (``make test`` runs two workers) the first worker to need it builds
    it under a file lock in the run's shared temp folder, and the others reuse it.
    """
    return _shared(tmp_path_factory, "smoke", lambda project: _build_smoke(project, mnist_dir))


def _shared(tmp_path_factory, name: str, build) -> Path:
    """A project every worker reads: under pytest-xdist the first worker to need it runs
    ``build(folder)`` under a file lock in the run's shared temp folder, the others reuse
    it; without xdist, a folder of this session."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        project = tmp_path_factory.mktemp(name)
        build(project)
        return project
    shared = tmp_path_factory.getbasetemp().parent  # the same folder for every worker
    with FileLock(shared / f"{name}.lock"):
        project = shared / name
        built = shared / f"{name}.built"
        if not built.exists():
            shutil.rmtree(project, ignore_errors=True)  # a worker's failed attempt
            project.mkdir()
            build(project)
            built.touch()
    return project


def _build_smoke(project: Path, mnist_dir: Path) -> Path:
    copy_project(project)
    set_params(project, **SMOKE)
    run(["git", "commit", "-qam", "smoke params"], project)
    run(["dvc", "repro"], project, stage_env(MNIST_MIRROR=str(mnist_dir)))
    return project


# A clearly better recipe than the smoke run's (+6 points on its slice: 661 against 51
# disagreements, p ~ 1e-136), with an alpha no such gain can meet: @challenger, not champion.
CHALLENGER_ARGS = ("-S", "train.learning_rate=0.013", "-S", "register.alpha=1e-300")


@pytest.fixture(scope="session")
def challenger_project(smoke_project, tmp_path_factory) -> Path:
    """`smoke_project` plus a second real run, `dvc exp run -n lr13` (CHALLENGER_ARGS): a
    better model kept as @challenger, the smoke champion staying. Its output is in
    ``exp-run.log``. Shared read-only, like the smoke project: the promotion test, the
    alias moving under load and the UI each start from a `clone_of` it instead of training
    the same second model three times."""
    from pipeline.testing.project import clone_of

    def build(project: Path) -> None:
        clone_of(smoke_project, project)
        proc = run(["dvc", "exp", "run", "-n", "lr13", *CHALLENGER_ARGS], project)
        (project / "exp-run.log").write_text(proc.stdout + proc.stderr)

    return _shared(tmp_path_factory, "challenger", build)


@pytest.fixture(scope="session")
def ui_project(challenger_project, tmp_path_factory) -> Path:
    """`challenger_project` (two pipeline runs) plus a real 2-trial sweep (study
    ``ui-sweep``, 1 epoch a trial): an MLflow store to look at in the UI."""
    import sys

    from pipeline.testing.project import clone_of

    project = clone_of(challenger_project, tmp_path_factory.mktemp("ui"))
    set_params(
        project,
        tune__study="ui-sweep",
        tune__n_trials=2,
        tune__epochs=1,
        tune__sampler="random",
        tune__space={"train.optimizer": {"choices": ["sgd", "adam"]}},
    )
    run([sys.executable, "-m", "pipeline.tune"], project)
    return project
