"""params.yaml parsed once into typed, validated, frozen dataclasses.

Every section is a dataclass; every key is a typed field. Unknown keys, wrong types and
impossible values raise :class:`ParamsError` with a message that names the key, e.g.
``params.yaml: train.batch_size: must be >= 1, got -3``.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

PARAMS_FILE = Path("params.yaml")


class ParamsError(ValueError):
    """params.yaml is missing, malformed, or holds an invalid value."""


def _range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> dict:
    return {"lo": lo, "hi": hi, "lo_open": lo_open}


@dataclass(frozen=True)
class DownloadParams:
    # Public MNIST mirrors, tried in order. MNIST_MIRROR (URL or directory) replaces them.
    mirrors: tuple[str, ...]
    timeout_s: float = field(default=30.0, metadata=_range(0, lo_open=True))
    retries: int = field(default=3, metadata=_range(1, 10))  # attempts per mirror
    backoff_s: float = field(default=1.0, metadata=_range(0))  # doubled after each attempt


@dataclass(frozen=True)
class PreprocessParams:
    val_size: int = field(default=5000, metadata=_range(1, 59_990))  # taken from the 60k train
    seed: int = field(default=42, metadata=_range(0))


@dataclass(frozen=True)
class ModelParams:
    activation: Literal["tanh", "relu"] = "tanh"
    pooling: Literal["max", "average"] = "max"
    padding: Literal[0, 2] = 2  # 2: the paper's 32x32 input; 0: the 28x28 variant


@dataclass(frozen=True)
class TrainParams:
    optimizer: Literal["sgd", "adam", "adamw", "rmsprop"] = "sgd"
    learning_rate: float = field(default=0.01, metadata=_range(0, lo_open=True))
    momentum: float = field(default=0.0, metadata=_range(0, 1))  # sgd, rmsprop
    nesterov: bool = False  # sgd
    weight_decay: float = field(default=0.0, metadata=_range(0, 1))  # adamw
    # constant | cosine (to 0 over all epochs) | exponential / step (x lr_decay_rate
    # every lr_decay_epochs, smoothly or in steps)
    lr_schedule: Literal["constant", "cosine", "exponential", "step"] = "constant"
    lr_decay_rate: float = field(default=0.1, metadata=_range(0, 1, lo_open=True))
    lr_decay_epochs: float = field(default=10.0, metadata=_range(0, lo_open=True))
    warmup_epochs: float = field(default=0.0, metadata=_range(0))  # cosine only
    label_smoothing: float = field(default=0.0, metadata=_range(0, 0.5))
    # Random shifts (± pixels) and rotations (± degrees) of training digits; compiled loop.
    augment_shift: int = field(default=0, metadata=_range(0, 6))
    augment_rotate: float = field(default=0.0, metadata=_range(0, 45))
    # compiled: one tf.function per epoch (faster, see BENCHMARKS.md) | fit: model.fit
    loop: Literal["compiled", "fit"] = "compiled"
    batch_size: int = field(default=128, metadata=_range(1, 60_000))
    epochs: int = field(default=30, metadata=_range(1, 10_000))
    seed: int = field(default=42, metadata=_range(0))
    max_samples: int | None = field(default=None, metadata=_range(1))  # null = all
    # TensorFlow intra/inter-op threads (null = TF's default, all cores). On CPU the sums
    # depend on it in the last bits, so a sweep trial and its rerun must use the same.
    threads: int | None = field(default=None, metadata=_range(1, 1024))


@dataclass(frozen=True)
class EvaluateParams:
    misclassified_shown: int = field(default=36, metadata=_range(1, 400))


@dataclass(frozen=True)
class TrackingParams:
    experiment: str = "lenet5-mnist"
    # CPU %, memory (and GPU) sampled by MLflow into system/* metrics of the train run.
    system_metrics: bool = False


@dataclass(frozen=True)
class RegisterParams:
    model_name: str = "lenet5-mnist"
    alias: str = "champion"
    # What ranks the runs: the final model's val_accuracy (ties: lower val_loss), so the
    # test split stays a fair estimate; test_accuracy (ties: test_loss) is the old rule.
    metric: Literal["val_accuracy", "test_accuracy"] = "val_accuracy"


@dataclass(frozen=True)
class Dimension:
    """One searched param: a ``low``..``high`` range (``log``: sampled on a log scale) or
    a list of ``choices``, each a valid value of the param ``key`` (``train.batch_size``)."""

    key: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None


# Params a sweep may not search: tune.epochs sets the epochs of every trial.
_NOT_SEARCHABLE = {"train.epochs": "set by tune.epochs"}


@dataclass(frozen=True)
class TuneParams:
    """``python -m pipeline.tune``: an Optuna study of train/model params on val_accuracy."""

    study: str = "lenet5-sweep"
    n_trials: int = field(default=20, metadata=_range(1, 100_000))  # the whole study's budget
    timeout_s: float | None = field(default=None, metadata=_range(0, lo_open=True))  # per run
    epochs: int = field(default=6, metadata=_range(1, 10_000))  # per trial
    sampler: Literal["tpe", "random"] = "tpe"
    seed: int = field(default=42, metadata=_range(0))
    startup_trials: int = field(default=5, metadata=_range(0))  # tpe: random trials first
    pruner: Literal["median", "hyperband", "none"] = "median"
    pruner_startup_trials: int = field(default=3, metadata=_range(0))  # median: finished first
    pruner_warmup_epochs: int = field(default=1, metadata=_range(0))  # median: never before
    space: tuple[Dimension, ...] = ()


@dataclass(frozen=True)
class Params:
    download: DownloadParams
    preprocess: PreprocessParams
    model: ModelParams
    train: TrainParams
    evaluate: EvaluateParams
    tracking: TrackingParams
    register: RegisterParams
    tune: TuneParams = TuneParams()

    def flat(self) -> dict[str, Any]:
        """All params as ``{"train.learning_rate": 0.01, ...}`` (for MLflow)."""
        out: dict[str, Any] = {}
        for section in dataclasses.fields(self):
            for key, value in dataclasses.asdict(getattr(self, section.name)).items():
                if section.name == "tune" and key == "space":
                    value = ",".join(d["key"] for d in value)  # the searched keys
                out[f"{section.name}.{key}"] = list(value) if isinstance(value, tuple) else value
        return out


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return {
        int: "an integer",
        float: "a number",
        bool: "true/false",
        str: "a string",
        type(None): "null",
    }.get(tp, str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it in the field's type."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        # bool is an int in Python: never let `true` pass for the literal 1.
        for allowed in typing.get_args(tp):
            if value == allowed and type(value) is type(allowed):
                return value
    elif origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key)
            except ParamsError:
                pass
    elif origin is tuple:
        (item_tp, _) = typing.get_args(tp)
        if isinstance(value, list):
            return tuple(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    elif tp is type(None):
        if value is None:
            return None
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, tp):
        return value
    raise ParamsError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def _check_range(value: Any, meta: typing.Mapping[str, Any], key: str) -> None:
    if value is None or not meta:
        return
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (value <= lo if meta.get("lo_open") else value < lo):
        raise ParamsError(
            f"{key}: must be {'>' if meta.get('lo_open') else '>='} {lo}, got {value!r}"
        )
    if hi is not None and value > hi:
        raise ParamsError(f"{key}: must be <= {hi}, got {value!r}")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ParamsError(f"{prefix}: expected a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ParamsError(f"{prefix}.{unknown[0]}: unknown key (known: {', '.join(fields)})")
    values = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}"
        if name not in raw:
            if f.default is dataclasses.MISSING:
                raise ParamsError(f"{key}: required key is missing")
            continue
        values[name] = _coerce(raw[name], hints[name], key)
        _check_range(values[name], f.metadata, key)
    return cls(**values)


def _validate(p: Params) -> None:
    """Cross-field checks that one field's annotation cannot express."""
    if not p.download.mirrors:
        raise ParamsError("download.mirrors: needs at least one mirror")
    for i, m in enumerate(p.download.mirrors):
        if not m.strip():
            raise ParamsError(f"download.mirrors[{i}]: empty mirror")
    if p.train.loop == "fit" and (p.train.augment_shift or p.train.augment_rotate):
        raise ParamsError(
            "train.loop: augmentation (augment_shift/augment_rotate) needs loop: compiled"
        )
    if p.tracking.experiment.strip() == "":
        raise ParamsError("tracking.experiment: must not be empty")
    if p.register.model_name.strip() == "" or p.register.alias.strip() == "":
        raise ParamsError("register: model_name and alias must not be empty")


def _build_tune(raw: Any) -> TuneParams:
    """The tune section; ``space`` maps params keys to a range or choices (see Dimension)."""
    if not isinstance(raw, dict):
        raise ParamsError(f"tune: expected a mapping of keys, got {raw!r}")
    space = raw.get("space") or {}
    if not isinstance(space, dict):
        raise ParamsError(f"tune.space: expected a mapping of params keys, got {space!r}")
    tune = _build(TuneParams, {k: v for k, v in raw.items() if k != "space"}, "tune")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", tune.study):
        # It names the DVC experiment of the best trial: a git ref name, no spaces.
        raise ParamsError(f"tune.study: letters, digits, '.', '_' and '-' only, got {tune.study!r}")
    dims = tuple(_dimension(key, spec) for key, spec in space.items())
    return dataclasses.replace(tune, space=dims)


def _dimension(key: Any, spec: Any) -> Dimension:
    """Check one searched param against the field it sets; every value must be valid."""
    where = f"tune.space.{key}"
    section, _, name = str(key).partition(".")
    cls = {"model": ModelParams, "train": TrainParams}.get(section)
    fields = {f.name: f for f in dataclasses.fields(cls)} if cls else {}
    if name not in fields:
        raise ParamsError(f"{where}: not a train or model param")
    if key in _NOT_SEARCHABLE:
        raise ParamsError(f"{where}: cannot be searched ({_NOT_SEARCHABLE[key]})")
    tp, meta = typing.get_type_hints(cls)[name], fields[name].metadata
    if not isinstance(spec, dict):
        raise ParamsError(f"{where}: expected {{low, high[, log]}} or {{choices}}, got {spec!r}")
    unknown = sorted(set(spec) - {"low", "high", "log", "choices"})
    if unknown:
        raise ParamsError(f"{where}.{unknown[0]}: unknown key (known: low, high, log, choices)")

    def valid(value: Any, at: str) -> Any:
        value = _coerce(value, tp, at)
        _check_range(value, meta, at)
        return value

    if "choices" in spec:
        if set(spec) != {"choices"}:
            raise ParamsError(f"{where}: choices cannot be combined with low/high/log")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ParamsError(f"{where}.choices: expected a non-empty list, got {choices!r}")
        values = tuple(valid(c, f"{where}.choices[{i}]") for i, c in enumerate(choices))
        return Dimension(str(key), choices=values)
    if "low" not in spec or "high" not in spec:
        raise ParamsError(f"{where}: needs both low and high, or choices")
    number = next((t for t in (int, float) if tp is t or t in typing.get_args(tp)), None)
    if number is None:
        raise ParamsError(f"{where}: {_type_name(tp)} has no range; use choices")
    low, high = (valid(spec[b], f"{where}.{b}") for b in ("low", "high"))
    if low is None or high is None:
        raise ParamsError(f"{where}: low and high must be numbers")
    if low > high:
        raise ParamsError(f"{where}: low ({low!r}) > high ({high!r})")
    log = _coerce(spec.get("log", False), bool, f"{where}.log")
    if log and low <= 0:
        raise ParamsError(f"{where}.low: must be > 0 with log: true, got {low!r}")
    return Dimension(str(key), low=low, high=high, log=log)


def parse_params(raw: Any) -> Params:
    """Validate a parsed params.yaml mapping (keys with defaults may be omitted)."""
    if not isinstance(raw, dict):
        raise ParamsError(f"expected a mapping of sections at the top level, got {raw!r}")
    hints = typing.get_type_hints(Params)
    names = [f.name for f in dataclasses.fields(Params)]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ParamsError(f"{unknown[0]}: unknown section (known: {', '.join(names)})")
    if "download" not in raw:
        raise ParamsError("download: required section is missing")
    sections = {n: _build(hints[n], raw.get(n) or {}, n) for n in names if n != "tune"}
    params = Params(**sections, tune=_build_tune(raw.get("tune") or {}))
    _validate(params)
    return params


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml; any problem raises ParamsError naming the key."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ParamsError(f"cannot read {path}: {e.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ParamsError(
            f"{path} is not valid YAML{where}: {getattr(e, 'problem', None) or e}"
        ) from None
    try:
        return parse_params(raw if raw is not None else {})
    except ParamsError as e:
        raise ParamsError(f"{path}: {e}") from None
