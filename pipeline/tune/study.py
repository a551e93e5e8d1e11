"""The study's parts that are plain functions: sampler, pruner, what a trial trains with,
and the best trial as a ``dvc exp run`` command."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial

from pipeline.core.params import Dimension, Params, TuneParams
from pipeline.tune.storage import TuneError

# Params that make a trial's training reproducible besides the searched ones: they go into
# the printed command even when the workspace already holds the same values.
PINNED = ("train.epochs", "train.seed", "train.max_samples", "train.threads")
# Study and trial user attributes (stored in Optuna's database).
PARENT_ATTR, BASE_ATTR = "mlflow_parent_run_id", "base_params"
RUN_ATTR, FAILURE_ATTR, THREADS_ATTR = "mlflow_run_id", "failure", "train.threads"


def make_sampler(cfg: TuneParams, trial_number: int = 0) -> BaseSampler:
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


def make_pruner(cfg: TuneParams) -> BasePruner:
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
    base = {
        k: v
        for k, v in params.flat().items()
        if k.startswith(("model.", "train.")) and k not in searched and k != "train.threads"
    }
    base["train.epochs"] = params.tune.epochs
    return base


def check_same_base(study: str, stored: Mapping[str, Any], now: Mapping[str, Any]) -> None:
    """A resumed study must train its new trials as it trained the old ones."""
    for key in sorted(set(stored) | set(now)):
        if stored.get(key) != now.get(key):
            raise TuneError(
                f"study {study} was made with {key}={stored.get(key)!r}, params.yaml now has "
                f"{now.get(key)!r}: restore it or name a new tune.study"
            )


def suggest(trial: optuna.Trial, space: tuple[Dimension, ...]) -> dict[str, Any]:
    """The trial's values for the searched keys (``{"train.learning_rate": 0.003, ...}``)."""
    values: dict[str, Any] = {}
    for d in space:
        if d.choices is not None:
            values[d.key] = trial.suggest_categorical(d.key, list(d.choices))
        elif isinstance(d.low, int) and isinstance(d.high, int):
            values[d.key] = trial.suggest_int(d.key, d.low, d.high, log=d.log)
        else:
            values[d.key] = trial.suggest_float(d.key, d.low, d.high, log=d.log)
    return values


def yaml_value(value: Any) -> str:
    """A value as `dvc exp run -S` parses it back (Hydra's grammar: null, true, 1e-06)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, float) else str(value)


def exp_command(name: str, values: Mapping[str, Any]) -> str:
    """``dvc exp run -n <name> -S key=value …`` for these flat params."""
    sets = " ".join(f"-S {k}={yaml_value(v)}" for k, v in values.items())
    return f"dvc exp run -n {name} {sets}"


def short(values: Mapping[str, Any]) -> str:
    """``learning_rate=0.003 optimizer=adam`` for a log line."""
    return " ".join(f"{k.split('.', 1)[1]}={yaml_value(v)}" for k, v in values.items())


def best_summary(study: optuna.Study, best: FrozenTrial) -> dict[str, Any]:
    """What data/tune/best.yaml holds: the best trial, its params and its command."""
    base = json.loads(study.user_attrs[BASE_ATTR])
    trial_params = {**base, **best.params, "train.threads": best.user_attrs.get(THREADS_ATTR)}
    run_params = dict(best.params)
    pinned = {k: trial_params.get(k) for k in PINNED if k not in run_params}
    name = f"{study.study_name}-t{best.number}"
    return {
        "study": study.study_name,
        "trial": best.number,
        "val_accuracy": best.value,
        "mlflow_run_id": best.user_attrs.get(RUN_ATTR),
        "params": {**run_params, **pinned},
        "command": exp_command(name, {**run_params, **pinned}),
    }
