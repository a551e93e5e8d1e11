"""``python -m pipeline.tune``: a hyperparameter search with Optuna, on validation accuracy.

The search is the ``tune:`` section of params.yaml. Every worker — ``--workers N``
processes here, and the same command on other machines — shares one Optuna study through
``OPTUNA_STORAGE`` (default: SQLite ``optuna.db`` beside ``mlflow.db`` in the main
workspace; SQLite serves one machine only, use a PostgreSQL URL across machines).

- ``tune.n_trials`` is the budget of the whole study: a worker creates a trial only under a
  lock held across machines (a PostgreSQL advisory lock; a file lock for SQLite) after
  counting every trial, running ones included, so concurrent workers never overshoot.
- A trial trains exactly as the train stage does (pipeline.core.training: same data slice, seed
  and ``tune.epochs`` epochs), reports ``val_accuracy`` each epoch to the pruner, and is
  an MLflow run nested under the sweep's parent run. The test split is never read.
- Each running trial beats a heartbeat; a worker that dies (SIGKILL, lost machine) leaves
  a trial whose heartbeat stops, and another worker marks it failed in Optuna and MLflow;
  such a lost trial does not count against the budget, so the others still finish it.
- At the end: the best trial as a ready ``dvc exp run`` command, also in data/tune/best.yaml.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
import logging
import math
import os
import socket
import subprocess
import sys
import threading
import time
import warnings
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import keras
import optuna
import sqlalchemy
import yaml
from optuna.trial import TrialState

from pipeline.core import tracking
from pipeline.core.cli import run
from pipeline.core.data import atomic_write, load_split, split_md5
from pipeline.core.errors import PipelineError
from pipeline.core.params import Dimension, Params, TuneParams, load_params
from pipeline.core.training import compile_model, fit, make_deterministic, set_threads, train_split

log = logging.getLogger(__name__)

STORAGE_ENV = "OPTUNA_STORAGE"
DB_NAME = "optuna.db"
BEST_FILE = Path("data/tune/best.yaml")
# Params that make a trial's training reproducible besides the searched ones: they go into
# the printed command even when the workspace already holds the same values.
PINNED = ("train.epochs", "train.seed", "train.max_samples", "train.threads")
# Study and trial user attributes (stored in Optuna's database).
_PARENT_ATTR, _BASE_ATTR = "mlflow_parent_run_id", "base_params"
_RUN_ATTR, _FAILURE_ATTR, _THREADS_ATTR = "mlflow_run_id", "failure", "train.threads"


class TuneError(PipelineError):
    """The sweep cannot start or continue (storage, study, params)."""


# --- storage -----------------------------------------------------------------------------


def storage_url(env: Mapping[str, str] = os.environ) -> str:
    """``OPTUNA_STORAGE``, else SQLite ``optuna.db`` at the main workspace's root.

    ``postgresql://`` without a driver means psycopg2 (the project's dependency): SQLAlchemy
    2.1 would pick psycopg 3 for it.
    """
    url = env.get(STORAGE_ENV, "").strip()
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            url = "postgresql+psycopg2://" + url.removeprefix(prefix)
    return url or f"sqlite:///{tracking.project_root() / DB_NAME}"


def open_storage(url: str, heartbeat_s: int, on_stale: Any) -> Any:
    """Optuna's RDBStorage with heartbeats; one line naming the (redacted) URL on failure."""
    if not url.startswith(("sqlite:///", "postgresql")):
        raise TuneError(f"{STORAGE_ENV}={tracking.redact(url)}: use sqlite:/// or postgresql://")
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        kwargs = {"connect_args": {"timeout": 60}}  # wait for the other workers' writes
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=kwargs,
                heartbeat_interval=heartbeat_s,
                grace_period=3 * heartbeat_s,
                heartbeat_stale_trial_callback=on_stale,
            )
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TuneError(f"optuna storage {tracking.redact(url)}: {reason[:300]}") from None


@contextlib.contextmanager
def budget_lock(url: str, study_name: str) -> Iterator[None]:
    """Mutual exclusion among every worker of the study, on any machine.

    PostgreSQL: a session advisory lock (released by the server if the worker dies).
    SQLite: an exclusive file lock beside the database (one machine: SQLite over a network
    file system is exactly what SQLite's own docs warn against).
    """
    key = zlib.crc32(f"pipeline.tune:{study_name}".encode())
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///").split("?")[0] + ".lock")
        with open(path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
        return
    engine = _lock_engine(url)
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
        try:
            yield
        finally:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()


_ENGINES: dict[str, Any] = {}


def _lock_engine(url: str) -> Any:
    if url not in _ENGINES:
        _ENGINES[url] = sqlalchemy.create_engine(url, pool_size=1, pool_pre_ping=True)
    return _ENGINES[url]


# --- the study -----------------------------------------------------------------------------


def make_sampler(cfg: TuneParams, trial_number: int = 0) -> Any:
    """The sampler for the trial ``trial_number``, seeded with ``tune.seed + trial_number``.

    Seeded per trial, not per worker: workers seeded alike would all suggest the same
    values, while this way one worker's sweep is reproducible and parallel ones differ.
    """
    seed = cfg.seed + trial_number
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # constant_liar: running trials count as bad guesses, so parallel workers spread out.
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=cfg.startup_trials, constant_liar=True
    )


def make_pruner(cfg: TuneParams) -> Any:
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=cfg.pruner_startup_trials, n_warmup_steps=cfg.pruner_warmup_epochs
        )
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=cfg.epochs)
    return optuna.pruners.NopPruner()


def base_params(params: Params) -> dict[str, Any]:
    """The model/train params every trial shares: what a resumed study must not change."""
    searched = {d.key for d in params.tune.space}
    flat = params.flat()
    base = {
        k: v
        for k, v in flat.items()
        if k.startswith(("model.", "train.")) and k not in searched and k != "train.threads"
    }
    base["train.epochs"] = params.tune.epochs
    return base


def suggest(trial: Any, space: tuple[Dimension, ...]) -> dict[str, Any]:
    """The trial's values for the searched keys (``{"train.learning_rate": 0.003, ...}``)."""
    values = {}
    for d in space:
        if d.choices is not None:
            values[d.key] = trial.suggest_categorical(d.key, list(d.choices))
        elif isinstance(d.low, int) and isinstance(d.high, int):
            values[d.key] = trial.suggest_int(d.key, d.low, d.high, log=d.log)
        else:
            values[d.key] = trial.suggest_float(d.key, d.low, d.high, log=d.log)
    return values


def with_values(params: Params, values: Mapping[str, Any]) -> Params:
    """``params`` with flat ``section.key`` values replaced (model and train only)."""
    changes: dict[str, dict[str, Any]] = {"model": {}, "train": {}}
    for key, value in values.items():
        section, name = key.split(".", 1)
        changes[section][name] = value
    return dataclasses.replace(
        params,
        model=dataclasses.replace(params.model, **changes["model"]),
        train=dataclasses.replace(params.train, **changes["train"]),
    )


def _yaml_value(value: Any) -> str:
    """A value as `dvc exp run -S` parses it back (Hydra's grammar: null, true, 1e-06)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, float) else str(value)


def exp_command(name: str, values: Mapping[str, Any]) -> str:
    """``dvc exp run -n <name> -S key=value …`` for these flat params."""
    sets = " ".join(f"-S {k}={_yaml_value(v)}" for k, v in values.items())
    return f"dvc exp run -n {name} {sets}"


# --- a worker ------------------------------------------------------------------------------


@dataclasses.dataclass
class Worker:
    """One process's share of the study: asks for trials until the budget is spent."""

    params: Params
    url: str
    threads: int | None
    heartbeat_s: int
    study: Any = None
    storage: Any = None
    experiment_id: str = ""
    parent_run_id: str = ""
    trial_epochs: int = 0
    run_tags: dict[str, str] = dataclasses.field(default_factory=dict)  # the same every trial

    def open(self) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own lines say enough
        cfg = self.params.tune
        self.experiment_id = tracking.connect(self.params.tracking.experiment)
        hashes = split_md5("train", "val")  # the test split is never read by a sweep
        self.run_tags = {**tracking.git_tags(), **{f"data.{s}.md5": h for s, h in hashes.items()}}
        self.storage = storage = open_storage(self.url, self.heartbeat_s, self._on_stale)
        base = base_params(self.params)
        with budget_lock(self.url, cfg.study):  # one worker creates the study and parent run
            self.study = optuna.create_study(
                storage=storage,
                study_name=cfg.study,
                direction="maximize",
                sampler=make_sampler(cfg),
                pruner=make_pruner(cfg),
                load_if_exists=True,
            )
            attrs = self.study.user_attrs
            if _BASE_ATTR not in attrs:
                self.study.set_user_attr(_BASE_ATTR, json.dumps(base, sort_keys=True))
            else:
                _check_same_base(cfg.study, json.loads(attrs[_BASE_ATTR]), base)
            self.parent_run_id = attrs.get(_PARENT_ATTR) or self._create_parent()
            if len(self._counted()) < cfg.n_trials:
                tracking.set_running(self.parent_run_id)  # a resumed study's parent
        log.info(
            "study %s in %s: %d of %d trials counted",
            cfg.study,
            tracking.redact(self.url),
            len(self._counted()),
            cfg.n_trials,
        )

    def _create_parent(self) -> str:
        cfg = self.params.tune
        run_id = tracking.create_run(
            self.experiment_id,
            f"sweep-{cfg.study}",
            {"optuna.study": cfg.study, "optuna.storage": tracking.redact(self.url)},
        )
        self.study.set_user_attr(_PARENT_ATTR, run_id)
        return run_id

    def _counted(self) -> list[Any]:
        """Trials that use up the budget: all but waiting ones and lost ones (a worker that
        died or was interrupted)."""

        def counts(t: Any) -> bool:
            if t.state == TrialState.FAIL:
                return t.user_attrs.get(_FAILURE_ATTR) == "error"
            return t.state != TrialState.WAITING

        return [t for t in self.study.get_trials(deepcopy=False) if counts(t)]

    def _on_stale(self, study: Any, trial: Any) -> None:
        """Another worker's trial stopped beating: fail its MLflow run too."""
        run_id = trial.user_attrs.get(_RUN_ATTR)
        log.warning("trial %d lost its worker (no heartbeat): marked FAIL", trial.number)
        if run_id:
            tracking.set_tags({"optuna.state": "FAIL"}, run_id=run_id)
            tracking.terminate(run_id, "FAILED")

    def work(self) -> None:
        """Run trials until the study's budget is met (or ``tune.timeout_s`` passed)."""
        cfg = self.params.tune
        deadline = time.monotonic() + cfg.timeout_s if cfg.timeout_s else math.inf
        while True:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(self.study)
            trial, beat = None, None
            with budget_lock(self.url, cfg.study):
                counted = self._counted()
                if len(counted) < cfg.n_trials and time.monotonic() < deadline:
                    self.study.sampler = make_sampler(cfg, len(self.study.get_trials(False)))
                    with warnings.catch_warnings():  # "heartbeat ... used with optimize": we
                        warnings.simplefilter("ignore", UserWarning)  # beat it ourselves
                        trial = self.study.ask()
                    # The storage's id of the trial (Trial has no public accessor for it).
                    beat = _Heartbeat(self.storage, trial._trial_id, self.heartbeat_s)
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

    def run_trial(self, trial: Any) -> None:
        """Train one trial; tell Optuna and MLflow how it ended."""
        cfg = self.params.tune
        values = suggest(trial, cfg.space)
        params = with_values(
            self.params, {**values, "train.epochs": cfg.epochs, "train.threads": self.threads}
        )
        run_id = tracking.start_child_run(
            self.experiment_id,
            self.parent_run_id,
            f"{cfg.study}-trial-{trial.number}",
            {
                "optuna.study": cfg.study,
                "optuna.trial": str(trial.number),
                "optuna.worker": f"{socket.gethostname()}:{os.getpid()}",
                **self.run_tags,
            },
        )
        trial.set_user_attr(_RUN_ATTR, run_id)
        trial.set_user_attr(_THREADS_ATTR, self.threads)
        state, value, status = TrialState.FAIL, None, "FAILED"
        report = Report(trial)
        try:
            tracking.log_params(params.flat())
            value = train_trial(params, report)
            state, status = TrialState.COMPLETE, "FINISHED"
            log.info("trial %d: val_accuracy %.4f %s", trial.number, value, _short(values))
        except optuna.TrialPruned as e:
            state, status = TrialState.PRUNED, "FINISHED"
            log.info("trial %d pruned: %s", trial.number, e)
        except KeyboardInterrupt:
            _set_attr(trial, _FAILURE_ATTR, "interrupted")
            status = "KILLED"
            raise
        except Exception as e:
            _set_attr(trial, _FAILURE_ATTR, "error")  # counts: rerunning would fail again
            log.warning("trial %d failed: %s", trial.number, str(e).splitlines()[0][:300])
            if not isinstance(e, PipelineError):
                raise
        finally:
            self.trial_epochs += report.epochs
            tracking.set_tags({"optuna.state": state.name})
            tracking.end_run(status)
            told = self.study.tell(
                trial,
                value if state == TrialState.COMPLETE else None,
                state=state,
                skip_if_finished=True,
            )
            if told.state != state:  # its heartbeat was missed: another worker failed it
                log.warning("trial %d was already marked %s", trial.number, told.state.name)

    def finish(self) -> dict[str, Any] | None:
        """Summarise the study on the parent run; the best trial (None if none completed)."""
        trials = self.study.get_trials(deepcopy=False)
        states = {s: sum(t.state == s for t in trials) for s in TrialState}
        summary = {
            "trials_complete": states[TrialState.COMPLETE],
            "trials_pruned": states[TrialState.PRUNED],
            "trials_failed": states[TrialState.FAIL],
            "trial_epochs": sum(len(t.intermediate_values) for t in trials),
        }
        done = not any(t.state == TrialState.RUNNING for t in trials)
        if states[TrialState.COMPLETE] == 0:
            tracking.log_metrics(summary, run_id=self.parent_run_id)
            log.warning("no trial completed in study %s", self.params.tune.study)
            return None
        best = self.study.best_trial
        tracking.log_metrics(
            {**summary, "best_val_accuracy": best.value}, run_id=self.parent_run_id
        )
        tracking.set_tags({"optuna.best_trial": str(best.number)}, run_id=self.parent_run_id)
        if done and len(self._counted()) >= self.params.tune.n_trials:
            tracking.terminate(self.parent_run_id, "FINISHED")
        return best_summary(self.study, best, self.params)


class _Heartbeat:
    """Beats for one running trial in a thread (Optuna's own loop does this in optimize)."""

    def __init__(self, storage: Any, trial_id: int, interval_s: int) -> None:
        self.storage, self.trial_id, self.interval_s = storage, trial_id, interval_s
        self.stop = threading.Event()
        self.storage.record_heartbeat(trial_id)  # at once: a trial never beaten never goes stale
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(self.interval_s):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as e:  # a storage hiccup: keep beating, the next may pass
                log.warning("heartbeat of trial id %d failed: %s", self.trial_id, e)

    def __enter__(self) -> None:
        self.thread.start()

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


class Report(keras.callbacks.Callback):
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


def train_trial(params: Params, report: Report) -> float:
    """Train as the train stage does, reporting to the pruner; the final val_accuracy."""
    cfg = params.train
    make_deterministic(cfg.seed)
    x, y = train_split(cfg)
    val = load_split("val")
    model = compile_model(params, math.ceil(len(x) / cfg.batch_size))
    start = time.perf_counter()
    history = fit(model, (x, y), val, cfg, [tracking.epoch_logger(), report])
    tracking.log_metrics(
        {
            "train_seconds": time.perf_counter() - start,
            "best_val_accuracy": history["val_accuracy"].max(),
        }
    )
    return float(history["val_accuracy"].iloc[-1])


def best_summary(study: Any, best: Any, params: Params) -> dict[str, Any]:
    """What data/tune/best.yaml holds: the best trial, its params and its command."""
    base = json.loads(study.user_attrs[_BASE_ATTR])
    trial_params = {**base, **best.params, "train.threads": best.user_attrs.get(_THREADS_ATTR)}
    run_params = dict(best.params)
    pinned = {k: trial_params.get(k) for k in PINNED if k not in run_params}
    name = f"{study.study_name}-t{best.number}"
    return {
        "study": study.study_name,
        "trial": best.number,
        "val_accuracy": best.value,
        "mlflow_run_id": best.user_attrs.get(_RUN_ATTR),
        "params": {**run_params, **pinned},
        "command": exp_command(name, {**run_params, **pinned}),
    }


def _set_attr(trial: optuna.Trial, key: str, value: Any) -> None:
    """Set a user attribute unless another worker already failed the trial."""
    with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
        trial.set_user_attr(key, value)


def _check_same_base(study: str, stored: dict[str, Any], now: dict[str, Any]) -> None:
    for key in sorted(set(stored) | set(now)):
        if stored.get(key) != now.get(key):
            raise TuneError(
                f"study {study} was made with {key}={stored.get(key)!r}, params.yaml now has "
                f"{now.get(key)!r}: restore it or name a new tune.study"
            )


def _short(values: Mapping[str, Any]) -> str:
    return " ".join(f"{k.split('.', 1)[1]}={_yaml_value(v)}" for k, v in values.items())


# --- the command ---------------------------------------------------------------------------


def cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def work(params: Params, url: str, threads: int | None, heartbeat_s: int) -> Worker:
    """Run one worker in this process (TensorFlow's threads are set before it runs)."""
    set_threads(threads)
    worker = Worker(params, url, threads, heartbeat_s)
    worker.open()
    worker.work()
    return worker


def write_best(best: Mapping[str, Any]) -> None:
    atomic_write(BEST_FILE, lambda tmp: tmp.write_text(yaml.safe_dump(dict(best), sort_keys=False)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.tune", description=__doc__)
    parser.add_argument("--workers", type=int, default=1, help="processes on this machine")
    parser.add_argument(
        "--heartbeat", type=int, default=10, help="seconds; a trial is lost after 3 missed"
    )
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)  # set by --workers
    parser.add_argument("--worker-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.workers < 1 or args.heartbeat < 1:
        raise TuneError("--workers and --heartbeat must be >= 1")
    params = load_params()  # a bad tune: section fails here, before any training
    if not params.tune.space:
        raise TuneError("tune.space: nothing to search (add params keys with low/high or choices)")
    url = storage_url()
    threads = args.threads or max(1, cores() // args.workers)
    load_split("val")  # fail in one line if the data is not prepared

    if args.workers == 1 or args.worker_only:
        worker = work(params, url, threads, args.heartbeat)
        log.info("this worker trained %d trial-epochs", worker.trial_epochs)
        if args.worker_only:
            return
    else:
        _spawn(args.workers, threads, args.heartbeat)
        worker = Worker(params, url, threads, args.heartbeat)
        worker.open()
    best = worker.finish()
    if best is None:
        raise TuneError(f"study {params.tune.study}: no trial completed")
    write_best(best)
    log.info(
        "best: trial %d, val_accuracy %.4f (%s)", best["trial"], best["val_accuracy"], BEST_FILE
    )
    sys.stdout.write(best["command"] + "\n")


def _spawn(n: int, threads: int, heartbeat_s: int) -> None:
    """Run ``n`` worker processes; wait for all. SIGTERM/Ctrl-C reach each of them."""
    cmd = [sys.executable, "-m", "pipeline.tune", "--worker-only", f"--threads={threads}"]
    cmd.append(f"--heartbeat={heartbeat_s}")
    procs = [subprocess.Popen(cmd) for _ in range(n)]
    log.info("%d workers (%d TensorFlow threads each): pids %s", n, threads, [p.pid for p in procs])
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        raise
    if any(codes):
        raise TuneError(f"workers exited with {codes}")


if __name__ == "__main__":
    run(main)
