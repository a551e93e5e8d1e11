"""The study's pure parts: seeded samplers, pruners, the params every trial shares, the
suggestions, and the best trial as a ``dvc exp run`` command."""

import dataclasses
import json
import shlex

import optuna
import pytest

from pipeline.core.params import Dimension
from pipeline.testing.project import reference_params
from pipeline.tune import study as st
from pipeline.tune.storage import TuneError
from pipeline.tune.study import exp_command

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def params():
    return reference_params({"train.max_samples": 2000, "train.threads": 2})


def suggestions(cfg, trial_number, space):
    study = optuna.create_study(direction="maximize", sampler=st.make_sampler(cfg, trial_number))
    return st.suggest(study.ask(), space)


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_a_sampler_is_seeded_per_trial(params, sampler):
    cfg = dataclasses.replace(params.tune, sampler=sampler)
    space = params.tune.space
    assert suggestions(cfg, 3, space) == suggestions(cfg, 3, space)
    assert suggestions(cfg, 3, space) != suggestions(cfg, 4, space)
    shifted = dataclasses.replace(cfg, seed=cfg.seed + 1)
    assert suggestions(shifted, 3, space) == suggestions(cfg, 4, space)  # seed + number


def test_sampler_types(params):
    tpe = st.make_sampler(dataclasses.replace(params.tune, sampler="tpe"))
    assert isinstance(tpe, optuna.samplers.TPESampler)
    rnd = st.make_sampler(dataclasses.replace(params.tune, sampler="random"))
    assert isinstance(rnd, optuna.samplers.RandomSampler)


@pytest.mark.parametrize(
    ("pruner", "cls"),
    [
        ("median", optuna.pruners.MedianPruner),
        ("hyperband", optuna.pruners.HyperbandPruner),
        ("none", optuna.pruners.NopPruner),
    ],
)
def test_pruner_per_cfg(params, pruner, cls):
    assert type(st.make_pruner(dataclasses.replace(params.tune, pruner=pruner))) is cls


def test_base_params_are_the_unsearched_model_and_train_params(params):
    base = st.base_params(params)
    searched = {d.key for d in params.tune.space}
    assert searched and not searched & set(base)
    assert "train.threads" not in base
    assert base["train.epochs"] == params.tune.epochs
    assert base["train.max_samples"] == 2000
    assert all(k.startswith(("model.", "train.")) for k in base)
    flat = params.flat()
    expected = {k for k in flat if k.startswith(("model.", "train.")) and k not in searched} - {
        "train.threads"
    }
    assert set(base) == expected


def test_base_params_ignore_threads_but_not_the_recipe(params):
    assert st.base_params(params.with_values({"train.threads": 7})) == st.base_params(params)
    assert st.base_params(params.with_values({"train.batch_size": 32})) != st.base_params(params)


def test_check_same_base():
    st.check_same_base("s", {"a": 1, "b": "x"}, {"b": "x", "a": 1})
    with pytest.raises(
        TuneError, match=r"study s was made with train\.seed=1, params.yaml now has 2"
    ):
        st.check_same_base("s", {"train.seed": 1}, {"train.seed": 2})
    with pytest.raises(TuneError, match=r"model\.pooling=None, params.yaml now has 'max'"):
        st.check_same_base("s", {}, {"model.pooling": "max"})
    with pytest.raises(TuneError, match=r"train\.seed=1, params.yaml now has None"):
        st.check_same_base("s", {"train.seed": 1}, {})


def test_suggest_each_kind_of_dimension():
    space = (
        Dimension("train.optimizer", choices=("sgd", "adam")),
        Dimension("train.batch_size", low=32, high=256, log=True),
        Dimension("train.learning_rate", low=0.0005, high=0.02, log=True),
        Dimension("train.momentum", low=0.5, high=0.99),
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    values = st.suggest(trial, space)
    assert list(values) == [d.key for d in space]
    assert values["train.optimizer"] in ("sgd", "adam")
    assert isinstance(values["train.batch_size"], int) and 32 <= values["train.batch_size"] <= 256
    assert 0.0005 <= values["train.learning_rate"] <= 0.02
    assert 0.5 <= values["train.momentum"] <= 0.99
    dists = trial.distributions
    assert isinstance(dists["train.optimizer"], optuna.distributions.CategoricalDistribution)
    assert isinstance(dists["train.batch_size"], optuna.distributions.IntDistribution)
    assert dists["train.batch_size"].log and dists["train.learning_rate"].log
    assert isinstance(dists["train.momentum"], optuna.distributions.FloatDistribution)
    assert not dists["train.momentum"].log


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "null"),
        (True, "true"),
        (False, "false"),
        (1e-06, "1e-06"),
        (0.003, "0.003"),
        (5, "5"),
        ("adam", "adam"),
        (2.0, "2.0"),
    ],  # fmt: skip
)
def test_yaml_value(value, text):
    assert st.yaml_value(value) == text


def test_exp_command_and_short():
    values = {"train.learning_rate": 0.003, "train.nesterov": True, "model.pooling": None}
    assert st.exp_command("sweep-t3", values) == (
        "dvc exp run -n sweep-t3 -S train.learning_rate=0.003 -S train.nesterov=true "
        "-S model.pooling=null"
    )
    assert st.short(values) == "learning_rate=0.003 nesterov=true pooling=null"


def test_best_summary(params):
    study = optuna.create_study(
        study_name="sweep", direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1)
    )
    base = st.base_params(params)
    study.set_user_attr(st.BASE_ATTR, json.dumps(base))
    for value in (0.97, 0.99, 0.98):
        trial = study.ask()
        st.suggest(trial, params.tune.space)
        trial.set_user_attr(st.RUN_ATTR, f"run-{trial.number}")
        trial.set_user_attr(st.THREADS_ATTR, 4)
        study.tell(trial, value)
    best = study.best_trial
    summary = st.best_summary(study, best)
    assert summary["study"] == "sweep" and summary["trial"] == 1
    assert summary["val_accuracy"] == 0.99 and summary["mlflow_run_id"] == "run-1"
    expected = {
        **best.params,
        "train.epochs": params.tune.epochs,
        "train.seed": params.train.seed,
        "train.max_samples": 2000,
        "train.threads": 4,
    }
    assert summary["params"] == expected
    assert summary["command"] == st.exp_command("sweep-t1", expected)
    assert summary["command"].startswith("dvc exp run -n sweep-t1 -S ")


def test_printed_command_parses_back_to_the_same_values():
    # DVC parses -S values with Hydra's override grammar.
    from hydra.core.override_parser.overrides_parser import OverridesParser

    values = {
        "train.learning_rate": 1.2345678901234567e-06,
        "train.momentum": 0.1 + 0.2,
        "train.batch_size": 64,
        "train.max_samples": None,
        "train.nesterov": True,
        "model.activation": "relu",
    }
    command = exp_command("s-t3", values)
    parser = OverridesParser.create()
    sets = shlex.split(command)[6::2]
    parsed = {o.key_or_group: o.value() for o in map(parser.parse_override, sets)}
    assert shlex.split(command)[:5] == ["dvc", "exp", "run", "-n", "s-t3"]
    assert parsed == values
    assert all(type(parsed[k]) is type(v) for k, v in values.items())
