"""One worker process of a sweep: asks the shared study for trials until its budget is
spent, trains each exactly as the train stage does, and tells Optuna and MLflow how each
ended. Heartbeats let the other workers fail a trial whose worker died."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import socket
import threading
import time
import warnings

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from pipeline.core import provenance, tracking, training
from pipeline.core.backend import keras
from pipeline.core.data import split_md5
from pipeline.core.errors import PipelineError, first_line, redact
from pipeline.core.params import Dimension, Params
from pipeline.tune import study as st
from pipeline.tune.storage import StudyLock, open_storage

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Worker:
    """One process's share of the study: asks for trials until the budget is spent."""

    params: Params
    url: str
    threads: int | None
    heartbeat_s: int
    study: optuna.Study = dataclasses.field(init=False)
    storage: RDBStorage = dataclasses.field(init=False)
    lock: StudyLock = dataclasses.field(init=False)
    experiment_id: str = ""
    parent_run_id: str = ""
    trial_epochs: int = 0
    run_tags: dict[str, str] = dataclasses.field(default_factory=dict)  # the same every trial

    def open(self) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own lines say enough
        cfg = self.params.tune
        self.experiment_id = tracking.connect(self.params.tracking.experiment)
        hashes = split_md5("train", "val")  # the test split is never read by a sweep
        self.run_tags = {
            **provenance.git_tags(),
            **{f"data.{s}.md5": h for s, h in hashes.items()},
        }
        self.storage = open_storage(self.url, self.heartbeat_s, self._on_stale)
        self.lock = StudyLock(self.url, cfg.study)
        base = st.base_params(self.params)
        with self.lock.held():  # one worker creates the study and the parent run
            self.study = optuna.create_study(
                storage=self.storage,
                study_name=cfg.study,
                direction="maximize",
                sampler=st.make_sampler(cfg),
                pruner=st.make_pruner(cfg),
                load_if_exists=True,
            )
            attrs = self.study.user_attrs
            if st.BASE_ATTR not in attrs:
                self.study.set_user_attr(st.BASE_ATTR, json.dumps(base, sort_keys=True))
            else:
                st.check_same_base(cfg.study, json.loads(attrs[st.BASE_ATTR]), base)
            self.parent_run_id = attrs.get(st.PARENT_ATTR) or self._create_parent(base)
            if len(self._counted()) < cfg.n_trials:
                tracking.set_running(self.parent_run_id)  # a resumed study's parent
        log.info(
            "study %s in %s: %d of %d trials counted",
            cfg.study, redact(self.url), len(self._counted()), cfg.n_trials,
        )  # fmt: skip

    def _create_parent(self, base: dict[str, object]) -> str:
        """The sweep's MLflow run: its search space, fixed params, budget, sampler, pruner."""
        cfg = self.params.tune
        run_id = tracking.create_run(
            self.experiment_id,
            f"sweep-{cfg.study}",
            {
                "optuna.study": cfg.study,
                "optuna.storage": redact(self.url),
                "mlflow.source.name": "pipeline.tune",
                **self.run_tags,
            },
        )
        space = {f"space.{d.key}": _describe(d) for d in cfg.space}
        tune = {k: v for k, v in self.params.flat().items() if k.startswith("tune.")}
        tracking.log_params({**tune, **space, **base}, run_id=run_id)
        self.study.set_user_attr(st.PARENT_ATTR, run_id)
        return run_id

    def _counted(self) -> list[FrozenTrial]:
        """Trials that use up the budget: all but waiting ones and lost ones (a worker that
        died or was interrupted)."""

        def counts(t: FrozenTrial) -> bool:
            if t.state == TrialState.FAIL:
                return t.user_attrs.get(st.FAILURE_ATTR) == "error"
            return t.state != TrialState.WAITING

        return [t for t in self.study.get_trials(deepcopy=False) if counts(t)]

    def _on_stale(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Another worker's trial stopped beating: fail its MLflow run too."""
        run_id = trial.user_attrs.get(st.RUN_ATTR)
        log.warning("trial %d lost its worker (no heartbeat): marked FAIL", trial.number)
        if run_id:
            tracking.set_tags({"optuna.state": "FAIL"}, run_id=run_id)
            tracking.terminate(run_id, "FAILED")

    def work(self) -> None:
        """Run trials until the study's budget is met (or ``tune.timeout_s`` passed)."""
        cfg = self.params.tune
        deadline = time.monotonic() + cfg.timeout_s if cfg.timeout_s else math.inf
        study_id = self.storage.get_study_id_from_name(cfg.study)
        while True:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(self.study)
            trial, beat = None, None
            with self.lock.held():
                counted = self._counted()
                if len(counted) < cfg.n_trials and time.monotonic() < deadline:
                    self.study.sampler = st.make_sampler(cfg, len(self.study.get_trials(False)))
                    with warnings.catch_warnings():  # "heartbeat ... used with optimize": we
                        warnings.simplefilter("ignore", UserWarning)  # beat it ourselves
                        trial = self.study.ask()
                    trial_id = self.storage.get_trial_id_from_study_id_trial_number(
                        study_id, trial.number
                    )
                    beat = Heartbeat(self.storage, trial_id, self.heartbeat_s)
            if trial is None:
                if time.monotonic() >= deadline:
                    log.info("tune.timeout_s reached: no new trials from this worker")
                    return
                if not any(t.state == TrialState.RUNNING for t in counted):
                    return  # budget spent and nothing left that could still fail
                time.sleep(self.heartbeat_s)  # a running trial elsewhere may yet be lost
                continue
            with beat:
                self.run_trial(trial)

    def run_trial(self, trial: optuna.Trial) -> None:
        """Train one trial as a nested MLflow run; tell Optuna and MLflow how it ended.

        A trial that fails with a PipelineError (e.g. diverged) ends FAILED and the worker
        goes on; any other error, and Ctrl-C, stop the worker.
        """
        cfg = self.params.tune
        tags = {
            "optuna.study": cfg.study,
            "optuna.trial": str(trial.number),
            "optuna.worker": f"{socket.gethostname()}:{os.getpid()}",
            **self.run_tags,
        }
        with (
            contextlib.suppress(_TrialFailed),
            tracking.active_run(
                experiment_id=self.experiment_id,
                run_name=f"{cfg.study}-trial-{trial.number}",
                tags=tags,
                parent_run_id=self.parent_run_id,
            ) as run_id,
        ):
            trial.set_user_attr(st.RUN_ATTR, run_id)
            trial.set_user_attr(st.THREADS_ATTR, self.threads)
            self._train_and_tell(trial)

    def _train_and_tell(self, trial: optuna.Trial) -> None:
        cfg = self.params.tune
        values = st.suggest(trial, cfg.space)
        params = self.params.with_values(
            {**values, "train.epochs": cfg.epochs, "train.threads": self.threads}
        )
        state, value = TrialState.FAIL, None
        pruning = PruningCallback(trial)
        try:
            tracking.log_params(params.flat())
            value = train_trial(params, pruning)
            state = TrialState.COMPLETE
            log.info("trial %d: val_accuracy %.4f %s", trial.number, value, st.short(values))
        except optuna.TrialPruned as e:
            state = TrialState.PRUNED
            # Told apart at a glance in the UI's runs table (its status stays FINISHED).
            tracking.set_tags({"mlflow.runName": f"{cfg.study}-trial-{trial.number} (pruned)"})
            log.info("trial %d pruned: %s", trial.number, e)
        except KeyboardInterrupt:
            _set_attr(trial, st.FAILURE_ATTR, "interrupted")
            raise
        except PipelineError as e:
            _set_attr(trial, st.FAILURE_ATTR, "error")  # counts: rerunning would fail again
            log.warning("trial %d failed: %s", trial.number, first_line(e))
            raise _TrialFailed from e
        except Exception:
            _set_attr(trial, st.FAILURE_ATTR, "error")
            raise
        finally:
            self.trial_epochs += pruning.epochs
            tracking.set_tags({"optuna.state": state.name})
            told = self.study.tell(
                trial,
                value if state == TrialState.COMPLETE else None,
                state=state,
                skip_if_finished=True,
            )
            if told.state != state:  # its heartbeat was missed: another worker failed it
                log.warning("trial %d was already marked %s", trial.number, told.state.name)

    def finish(self) -> dict[str, object] | None:
        """Summarise the study on the parent run; the best trial (None if none completed)."""
        trials = self.study.get_trials(deepcopy=False)
        states = {s: sum(t.state == s for t in trials) for s in TrialState}
        summary = {
            "sweep/trials_complete": states[TrialState.COMPLETE],
            "sweep/trials_pruned": states[TrialState.PRUNED],
            "sweep/trials_failed": states[TrialState.FAIL],
            "sweep/trial_epochs": sum(len(t.intermediate_values) for t in trials),
        }
        done = not any(t.state == TrialState.RUNNING for t in trials)
        if states[TrialState.COMPLETE] == 0:
            tracking.log_metrics(summary, run_id=self.parent_run_id)
            log.warning("no trial completed in study %s", self.params.tune.study)
            return None
        best = self.study.best_trial
        tracking.log_metrics(
            {**summary, "sweep/best_val_accuracy": best.value}, run_id=self.parent_run_id
        )
        best_run = best.user_attrs.get(st.RUN_ATTR, "")
        tracking.set_tags(
            {"optuna.best_trial": str(best.number), "optuna.best_run_id": best_run},
            run_id=self.parent_run_id,
        )
        if done and len(self._counted()) >= self.params.tune.n_trials:
            tracking.terminate(self.parent_run_id, "FINISHED")
        return st.best_summary(self.study, best)


class _TrialFailed(Exception):
    """A trial failed in a way that fails only that trial (its run is marked FAILED)."""


class Heartbeat:
    """Beats for one running trial in a thread (Optuna's own loop does this in optimize)."""

    def __init__(self, storage: RDBStorage, trial_id: int, interval_s: int) -> None:
        self.storage, self.trial_id, self.interval_s = storage, trial_id, interval_s
        self.stop = threading.Event()
        self.storage.record_heartbeat(trial_id)  # at once: a trial never beaten never goes stale
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(self.interval_s):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as e:  # a storage hiccup: keep beating, the next may pass
                log.warning("heartbeat of trial id %d failed: %s", self.trial_id, first_line(e))

    def __enter__(self) -> None:
        self.thread.start()

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


class PruningCallback(keras.callbacks.Callback):
    """Reports each epoch's val_accuracy to the trial; raises TrialPruned when told to."""

    def __init__(self, trial: optuna.Trial) -> None:
        super().__init__()
        self.trial, self.epochs = trial, 0

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.epochs = epoch + 1
        acc = float((logs or {}).get("val_accuracy", float("nan")))
        self.trial.report(acc, epoch + 1)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"val_accuracy {acc:.4f} after epoch {epoch + 1}")


def train_trial(params: Params, pruning: PruningCallback) -> float:
    """Train through the train stage's own entry point; the final val_accuracy."""
    trained = training.prepare(params).fit([tracking.epoch_logger(), pruning])
    tracking.log_metrics(trained.run_metrics())
    return trained.final()["val_accuracy"]


def _set_attr(trial: optuna.Trial, key: str, value: object) -> None:
    """Set a user attribute unless another worker already failed the trial."""
    with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
        trial.set_user_attr(key, value)


def _describe(d: Dimension) -> str:
    """A searched dimension as a param value: ``[sgd, adam]`` or ``0.0005..0.02 (log)``."""
    if d.choices is not None:
        return "[" + ", ".join(st.yaml_value(c) for c in d.choices) + "]"
    return f"{d.low}..{d.high}" + (" (log)" if d.log else "")
