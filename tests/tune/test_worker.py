"""A worker's small parts: the pruning callback on a real in-memory study, the heartbeat
thread on a real SQLite storage, and how a searched dimension is logged.

``Worker.run_trial`` and ``finish`` run end to end in tests/tune/test_sweeps.py.
"""

import time
import warnings

import optuna
import pytest
from optuna.trial import TrialState

from pipeline.core.params import Dimension
from pipeline.tune.storage import open_storage
from pipeline.tune.worker import Heartbeat, PruningCallback, _describe

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def trial():
    study = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.5)
    )
    return study.ask()


def test_a_good_epoch_is_reported_and_not_pruned(trial):
    callback = PruningCallback(trial)
    assert callback.epochs == 0
    callback.on_epoch_end(0, {"val_accuracy": 0.9, "val_loss": 0.3})
    callback.on_epoch_end(1, {"val_accuracy": 0.92})
    assert callback.epochs == 2
    frozen = trial.study.trials[0]
    assert frozen.intermediate_values == {1: 0.9, 2: 0.92}  # steps are 1-based epochs


def test_a_bad_epoch_prunes_the_trial_naming_the_epoch(trial):
    callback = PruningCallback(trial)
    callback.on_epoch_end(0, {"val_accuracy": 0.9})
    with pytest.raises(optuna.TrialPruned, match=r"^val_accuracy 0\.1000 after epoch 2$"):
        callback.on_epoch_end(1, {"val_accuracy": 0.1})
    assert callback.epochs == 2  # counted before the trial was pruned
    assert trial.study.trials[0].intermediate_values == {1: 0.9, 2: 0.1}


def test_an_epoch_without_val_accuracy_prunes_as_nan(trial):
    callback = PruningCallback(trial)
    with pytest.raises(optuna.TrialPruned, match=r"val_accuracy nan after epoch 1"):
        callback.on_epoch_end(0, None)


def stale_failed(study) -> list[int]:
    """Fail stale trials as a worker does; the numbers of the trials now FAIL."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    return [t.number for t in study.get_trials(deepcopy=False) if t.state == TrialState.FAIL]


def test_a_beating_trial_is_never_stale_and_a_silent_one_is(tmp_path):
    """Two trials beaten at once; only one keeps beating. SQLite's clock has whole seconds,
    so a trial is surely stale 4 s after its last beat (grace: 3 s), never after 2."""
    stale = []
    storage = open_storage(
        f"sqlite:///{tmp_path / 'optuna.db'}", 1, lambda s, t: stale.append(t.number)
    )
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    study_id = storage.get_study_id_from_name("s")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "heartbeat ... used with optimize"
        beating, silent = study.ask(), study.ask()
    ids = [
        storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        for t in (beating, silent)
    ]
    beat = Heartbeat(storage, ids[0], 1)
    Heartbeat(storage, ids[1], 1)  # beaten once, never started: its worker "died"
    assert stale_failed(study) == []
    with beat:
        time.sleep(4.2)
        assert stale_failed(study) == [silent.number]
        assert stale == [silent.number]  # the storage's callback (the worker's _on_stale)
        assert beat.thread.is_alive()
    assert not beat.thread.is_alive()  # exiting stops the beats
    assert stale_failed(study) == [silent.number]  # the last beat is still recent
    states = {t.number: t.state for t in study.trials}
    assert states == {beating.number: TrialState.RUNNING, silent.number: TrialState.FAIL}


def test_a_trial_is_beaten_at_once():
    """The first beat comes in the constructor, before the thread starts."""
    calls = []
    storage = type("Storage", (), {"record_heartbeat": lambda self, tid: calls.append(tid)})()
    beat = Heartbeat(storage, 7, 60)
    assert calls == [7]
    with beat:
        pass  # stops at once, not after a 60 s wait
    assert calls == [7]


def test_a_failed_beat_is_logged_and_the_beating_goes_on(caplog):
    calls = []

    def record(tid):
        calls.append(tid)
        if len(calls) == 2:
            raise RuntimeError("database is locked\nmore")

    storage = type("Storage", (), {"record_heartbeat": lambda self, tid: record(tid)})()
    with caplog.at_level("WARNING", logger="pipeline.tune.worker"), Heartbeat(storage, 3, 0.2):
        deadline = time.monotonic() + 10  # beats every 0.2 s; a busy machine may lag
        while len(calls) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert len(calls) >= 3
    assert [r.getMessage() for r in caplog.records] == [
        "heartbeat of trial id 3 failed: database is locked"
    ]


def test_describe_choices():
    assert _describe(Dimension("train.optimizer", choices=("sgd", "adam"))) == "[sgd, adam]"
    assert _describe(Dimension("model.padding", choices=(True, False))) == "[true, false]"
    assert _describe(Dimension("x", choices=(None, 0.5, 64))) == "[null, 0.5, 64]"


def test_describe_ranges():
    log_range = Dimension("train.learning_rate", low=0.0005, high=0.02, log=True)
    assert _describe(log_range) == "0.0005..0.02 (log)"
    assert _describe(Dimension("train.batch_size", low=32, high=256)) == "32..256"
