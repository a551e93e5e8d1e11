"""params.yaml parsed once into typed, validated, frozen dataclasses.

Every section is a dataclass; every key is a typed field with its valid range. The values,
and what each key means, live in params.yaml only: it is the one source (DVC needs every
key there anyway), so no field has a default and a missing key is an error. Unknown keys,
wrong types and impossible values raise :class:`ParamsError` with a message that names
the key, e.g. ``params.yaml: train.batch_size: must be >= 1, got -3``.

:meth:`Params.flat` and :meth:`Params.with_values` map to and from the flat
``section.key`` names that MLflow, ``dvc exp run -S`` and sweeps use.

A little over 350 lines: one dataclass per section plus the checks that give every bad
value its one-line message; splitting the checks from the types they check would only
make both harder to read.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.core.errors import ParamsError

PARAMS_FILE = Path("params.yaml")
# PyYAML reads YAML 1.1, where `1e-4` (no dot) is a string; DVC writes YAML 1.2, where it
# is a float, e.g. after `dvc exp run -S train.learning_rate=1e-4`.
_YAML12_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)[eE][-+]?[0-9]+")


def _field(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> Any:
    """A required field (no default: params.yaml holds every value) with its valid range."""
    return field(metadata={"lo": lo, "hi": hi, "lo_open": lo_open})


@dataclass(frozen=True)
class DownloadParams:
    mirrors: tuple[str, ...]
    timeout_s: float = _field(0, lo_open=True)
    retries: int = _field(1, 10)
    backoff_s: float = _field(0)


@dataclass(frozen=True)
class PreprocessParams:
    val_size: int = _field(1, 59_990)
    seed: int = _field(0)


@dataclass(frozen=True)
class ModelParams:
    activation: Literal["tanh", "relu"]
    pooling: Literal["max", "average"]
    padding: Literal[0, 2]


@dataclass(frozen=True)
class TrainParams:
    optimizer: Literal["sgd", "adam", "adamw", "rmsprop"]
    learning_rate: float = _field(0, lo_open=True)
    momentum: float = _field(0, 1)
    nesterov: bool = _field()
    weight_decay: float = _field(0, 1)
    lr_schedule: Literal["constant", "cosine", "exponential", "step"] = _field()
    lr_decay_rate: float = _field(0, 1, lo_open=True)
    lr_decay_epochs: float = _field(0, lo_open=True)
    warmup_epochs: float = _field(0)
    label_smoothing: float = _field(0, 0.5)
    augment_shift: int = _field(0, 6)
    augment_rotate: float = _field(0, 45)
    loop: Literal["compiled", "fit"] = _field()
    precision: Literal["float32", "mixed_bfloat16"] = _field()
    batch_size: int = _field(1, 60_000)
    epochs: int = _field(1, 10_000)
    seed: int = _field(0)
    max_samples: int | None = _field(1)
    threads: int | None = _field(1, 1024)
    feedback_repeat: int = _field(0, 1_000)
    feedback_rotate: int = _field(0, 180)


@dataclass(frozen=True)
class EvaluateParams:
    misclassified_shown: int = _field(1, 400)
    robustness_images: int | None = _field(1)
    robustness_seed: int = _field(0)


@dataclass(frozen=True)
class TrackingParams:
    experiment: str
    system_metrics: bool


@dataclass(frozen=True)
class RegisterParams:
    model_name: str
    alias: str
    metric: Literal["val_accuracy", "test_accuracy"]
    alpha: float = _field(0, 0.5, lo_open=True)
    min_gain: float = _field(0, 100)
    max_loss: float = _field(0, 100)
    production_max_loss: float = _field(0, 100)
    min_slice_images: int = _field(1)


@dataclass(frozen=True)
class ServeParams:
    """``python -m pipeline.serve``: the scoring service of ``register.model_name@alias``."""

    host: str
    port: int = _field(0, 65_535)
    workers: int = _field(1, 64)
    poll_s: float = _field(0, lo_open=True)
    max_batch: int = _field(1, 65_536)
    max_wait_ms: float = _field(0, 1_000)
    max_queue: int = _field(1)
    max_queue_ms: float = _field(0, 60_000, lo_open=True)
    max_body_mb: float = _field(0, 1_024, lo_open=True)
    drain_s: float = _field(0, 600)
    log_url: str | None = _field()
    log_pixels: bool = _field()
    log_flush_ms: float = _field(1, 60_000)
    spool_dir: str | None = _field()
    keys_for_predictions: bool = _field()


@dataclass(frozen=True)
class FeedbackParams:
    """Stage ``feedback``: the labelled images of the prediction log as training data."""

    until: str | None = _field()  # ISO 8601, UTC unless it says otherwise
    holdout: float = _field(0, 1)


@dataclass(frozen=True)
class RetrainParams:
    """``python -m pipeline.retrain --if-needed``: when a retrain is due."""

    min_labels: int = _field(1)
    min_labels_on_drift: int = _field(1)  # once the monitor found drift


@dataclass(frozen=True)
class MonitorParams:
    """``python -m pipeline.monitor``: drift and accuracy of the served model, from its log."""

    last: int = _field(1)
    window: int | None = _field(10)
    p_value: float = _field(0, 0.5, lo_open=True)
    embedding_auc: float = _field(0.5, 1, lo_open=True)
    untrusted_auc: float = _field(0.5, 1, lo_open=True)
    drift_share: float = _field(0, 1, lo_open=True)
    max_drop: float = _field(0, 100)
    bootstrap: int = _field(10, 100_000)


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

    study: str
    n_trials: int = _field(1, 100_000)
    timeout_s: float | None = _field(0, lo_open=True)
    epochs: int = _field(1, 10_000)
    sampler: Literal["tpe", "random"] = _field()
    seed: int = _field(0)
    startup_trials: int = _field(0)
    pruner: Literal["median", "hyperband", "none"] = _field()
    pruner_startup_trials: int = _field(0)
    pruner_warmup_epochs: int = _field(0)
    space: tuple[Dimension, ...] = ()  # filled from the mapping by _build_tune


@dataclass(frozen=True)
class Params:
    download: DownloadParams
    preprocess: PreprocessParams
    model: ModelParams
    train: TrainParams
    evaluate: EvaluateParams
    tracking: TrackingParams
    register: RegisterParams
    tune: TuneParams
    serve: ServeParams
    monitor: MonitorParams
    feedback: FeedbackParams
    retrain: RetrainParams

    def flat(self) -> dict[str, Any]:
        """All params as flat keys, ``{"train.learning_rate": 0.01, ...}`` (MLflow's params,
        ``dvc exp run -S`` keys); tune.space as the comma-joined searched keys."""
        out: dict[str, Any] = {}
        for section in dataclasses.fields(self):
            for key, value in dataclasses.asdict(getattr(self, section.name)).items():
                if section.name == "tune" and key == "space":
                    value = ",".join(d["key"] for d in value)  # the searched keys
                out[f"{section.name}.{key}"] = list(value) if isinstance(value, tuple) else value
        return out

    def with_values(self, values: Mapping[str, Any]) -> Params:
        """These params with flat ``section.key`` values replaced, each checked as
        params.yaml's would be (``{"train.epochs": 3}``)."""
        changes: dict[str, dict[str, Any]] = {}
        for key, value in values.items():
            section, _, name = key.partition(".")
            changes.setdefault(section, {})[name] = value
        replaced = {}
        for section, fields in changes.items():
            current = getattr(self, section, None)
            if current is None or section == "tune":
                raise ParamsError(f"{section}: not a section that can be set by key")
            cls = type(current)
            now = {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(current).items()
            }
            raw = {**now, **fields}
            replaced[section] = _build(cls, raw, section)
        params = dataclasses.replace(self, **replaced)
        _validate(params)
        return params


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
        if isinstance(value, str) and _YAML12_FLOAT.fullmatch(value.strip()):
            return float(value)  # `1e-4`: a float in YAML 1.2 (DVC's -S writes it so)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is str and isinstance(value, datetime.date):
        return value.isoformat()  # YAML 1.1 reads an unquoted timestamp as a datetime
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
    if p.feedback.until is not None:
        until_time(p.feedback.until)
    if p.register.alias == "challenger":
        raise ParamsError("register.alias: 'challenger' is the alias of a candidate that lost")


def until_time(value: str) -> datetime.datetime:
    """``feedback.until`` as an aware UTC datetime (a time without a zone is UTC)."""
    try:
        at = datetime.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ParamsError(f"feedback.until: expected an ISO 8601 time such as "
                          f"2026-12-06T10:00:00Z, got {value!r}") from None  # fmt: skip
    return (at if at.tzinfo else at.replace(tzinfo=datetime.UTC)).astimezone(datetime.UTC)


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
    """Validate a parsed params.yaml mapping: every section and key, nothing else."""
    if not isinstance(raw, dict):
        raise ParamsError(f"expected a mapping of sections at the top level, got {raw!r}")
    hints = typing.get_type_hints(Params)
    names = [f.name for f in dataclasses.fields(Params)]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ParamsError(f"{unknown[0]}: unknown section (known: {', '.join(names)})")
    missing = [n for n in names if n not in raw]
    if missing:
        raise ParamsError(f"{missing[0]}: required section is missing")
    sections = {n: _build(hints[n], raw[n] or {}, n) for n in names if n != "tune"}
    params = Params(**sections, tune=_build_tune(raw["tune"] or {}))
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
