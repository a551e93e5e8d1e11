"""The model card of a registered version, in Hugging Face's layout (``card.md.j2``).

YAML front matter (``license``, ``tags``, ``library_name``, ``datasets``, ``metrics`` and
a ``model-index`` of results) written with :func:`yaml.safe_dump`, then the sections:
model details, intended use, training data, training procedure, evaluation, robustness,
promotion and how to use. Every value on the card is a logged fact (:class:`CardFacts`:
the run's params, metrics and tags, the version, dvc.lock's hashes, the evaluation files,
the gate record); the card only formats them, one formatter per kind of number. No MLflow
here: ``register`` gathers the facts and calls :func:`render`.

A little over 350 lines: one small formatter per kind of number (the test checks every
number on the card with the same ones), and the registry's shortened description.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jinja2
import yaml

from pipeline.core.promotion import wilson

TEMPLATE = "card.md.j2"
TAGS = ("image-classification", "mnist", "lenet-5", "keras", "mlflow", "dvc")
WEAKEST_SHOWN = 3
_SPLIT_FILE = re.compile(r"^data/prepared/(\w+)\.npz$")
_ROBUST_PREFIX = re.compile(r"^robust(?:ness)?[./_]")


@dataclasses.dataclass(frozen=True)
class ClassRow:
    """One line of data/eval/per_class.csv."""

    digit: int
    precision: float
    recall: float
    f1: float
    support: int


@dataclasses.dataclass(frozen=True)
class Confusion:
    """``count`` test images of digit ``actual`` predicted as ``predicted``."""

    actual: int
    predicted: int
    count: int


@dataclasses.dataclass(frozen=True)
class CardFacts:
    """Everything the card shows, as logged.

    ``params``: the run's params (flat keys, as MLflow stores them: strings);
    ``metrics``: the run's metrics (``test_accuracy``, ``test_loss``, ``val_accuracy``,
    ``val_loss``, optionally ``train_seconds``); ``tags``: the run's tags (``git.commit``,
    ``git.dirty``, ``dvc.exp_name``, ``data.<split>.md5``, ``device``); ``data_md5``: split ->
    md5 from dvc.lock (:func:`dvc_hashes`); ``split_sizes``: split -> images
    (:func:`split_sizes`); ``per_class`` (:func:`per_class_rows`); ``confusions``
    (:func:`top_confusions`); ``robustness``: perturbation -> accuracy, ``None`` when not
    measured (:func:`robustness_of`); ``gate``: champion.json's ``gate`` record
    (:func:`pipeline.core.promotion.gate_record` plus ``decision`` and ``reason``), ``None``
    or empty when the version was never gated.
    """

    name: str
    version: str
    run_id: str
    params: Mapping[str, Any]
    metrics: Mapping[str, float]
    tags: Mapping[str, str]
    data_md5: Mapping[str, str]
    split_sizes: Mapping[str, int]
    per_class: tuple[ClassRow, ...]
    confusions: tuple[Confusion, ...]
    robustness: Mapping[str, float] | None = None
    gate: Mapping[str, Any] | None = None
    alias: str = "champion"
    license: str = "unknown"


# --- Pure helpers: each turns one logged source into card facts ---------------------------


def dvc_hashes(lock: Mapping[str, Any]) -> dict[str, str]:
    """Split -> md5 of ``data/prepared/<split>.npz`` in a loaded dvc.lock: what the
    stages that read the splits (train, evaluate) depended on, else preprocess's outs."""
    stages = lock.get("stages", {})
    found: dict[str, str] = {}
    for kind in ("deps", "outs"):  # what train/evaluate used wins over what was made
        for stage in stages.values():
            for entry in stage.get(kind, ()):
                match = _SPLIT_FILE.match(entry.get("path", ""))
                if match and entry.get("md5"):
                    found.setdefault(match.group(1), entry["md5"])
    return found


def split_sizes(summary: Mapping[str, Any]) -> dict[str, int]:
    """Split -> image count from data/prepared/summary.json."""
    return {split: int(facts["count"]) for split, facts in summary.items()}


def per_class_rows(table: Any) -> tuple[ClassRow, ...]:
    """data/eval/per_class.csv (a DataFrame or an iterable of row mappings) as rows."""
    rows = table.to_dict("records") if hasattr(table, "to_dict") else table
    return tuple(
        ClassRow(
            digit=int(r["digit"]),
            precision=float(r["precision"]),
            recall=float(r["recall"]),
            f1=float(r["f1"]),
            support=int(r["support"]),
        )
        for r in rows
    )


def top_confusions(
    actual: Iterable[int], predicted: Iterable[int], k: int = 5
) -> tuple[Confusion, ...]:
    """The ``k`` most frequent off-diagonal (actual, predicted) pairs, most frequent
    first, ties by digit: a tuple of :class:`Confusion`."""
    pairs = Counter((int(a), int(p)) for a, p in zip(actual, predicted, strict=True) if a != p)
    ranked = sorted(pairs.items(), key=lambda item: (-item[1], item[0]))
    return tuple(Confusion(a, p, n) for (a, p), n in ranked[:k])


def robustness_of(metrics: Mapping[str, Any]) -> dict[str, float] | None:
    """Perturbation -> accuracy from an evaluation metrics dict, whichever shape holds it:
    a nested ``robust``/``robustness`` object (``{"shift_2px": 0.97}``, ``_accuracy``
    suffixes or ``{"accuracy": ...}`` values) or prefixed keys (``robust.shift_2px_accuracy``,
    ``robust/...``, ``robustness.``). Losses and ``clean`` are left out; ``None`` when none."""
    found: dict[str, float] = {}

    def add(name: str, value: Any) -> None:
        if isinstance(value, Mapping):
            value = value.get("accuracy")
        name = name.removesuffix("accuracy").rstrip("_./")
        if value is None or name in ("", "clean") or name.endswith("loss"):
            return
        found[name] = float(value)

    for key, value in metrics.items():
        if key in ("robust", "robustness") and isinstance(value, Mapping):
            for name, inner in value.items():
                add(str(name), inner)
        elif _ROBUST_PREFIX.match(key):
            add(_ROBUST_PREFIX.sub("", key), value)
    return found or None


def lenet5_params(padding: int) -> int:
    """Trainable parameters of LeNet-5 (:func:`pipeline.core.model.build_lenet5`) with
    ``model.padding``: 61,706 at 2 (32×32 input), 44,426 at 0."""
    side = ((28 + 2 * int(padding) - 4) // 2 - 4) // 2  # after C1, S2, C3, S4
    layers = [(5 * 5 * 1, 6), (5 * 5 * 6, 16), (16 * side * side, 120), (120, 84), (84, 10)]
    return sum((n_in + 1) * n_out for n_in, n_out in layers)


# --- Formatting: one formatter per kind of number, the card's and the tests' --------------


def _defined(func: Callable[..., Any]) -> Callable[..., Any]:
    """A filter that fails like StrictUndefined on a missing value."""

    @functools.wraps(func)
    def wrapper(value: Any, *args: Any) -> Any:
        for v in (value, *args):
            if isinstance(v, jinja2.Undefined):
                v._fail_with_undefined_error()
        return func(value, *args)

    return wrapper


@_defined
def pct(fraction: float) -> str:
    """An accuracy (or precision, recall, F1) as a percentage: 0.9826 -> ``98.26 %``."""
    return f"{100 * float(fraction):.2f} %"


@_defined
def loss(value: float) -> str:
    return f"{float(value):.4f}"


@_defined
def pval(p: float) -> str:
    """Three significant digits: ``0.0123``, ``0.500``, ``1.23e-05``."""
    return f"{float(p):#.3g}"


@_defined
def pts(value: float) -> str:
    """Signed accuracy points, two decimals: ``+0.18``."""
    return f"{float(value):+.2f}"


@_defined
def count(n: int) -> str:
    return f"{int(n):,}"


@_defined
def plain(x: Any) -> str:
    """A param or setting, logged (a string) or not, the same way: ``42``, ``0.01``,
    ``1e-05`` (whole numbers as integers, others as Python writes them); text as is."""
    try:
        value = float(x)
    except (TypeError, ValueError):
        return str(x)
    return str(int(value)) if value.is_integer() else repr(value)


@_defined
def drop(accuracy: float, clean: float) -> str:
    """Accuracy points lost against the clean test accuracy: ``7.03``."""
    return f"{100 * (float(clean) - float(accuracy)):.2f}"


@_defined
def interval(accuracy: float, n: int) -> str:
    """The 95 % Wilson interval of an accuracy on ``n`` images: ``[97.99 %, 98.50 %]``."""
    low, high = wilson(round(float(accuracy) * int(n)), int(n))
    return f"[{pct(low)}, {pct(high)}]"


@_defined
def number(param: Any) -> int | float:
    """A logged param (a string in MLflow) as a number."""
    value = float(param)
    return int(value) if value.is_integer() else value


FILTERS = {
    "pct": pct, "loss": loss, "pval": pval, "pts": pts, "count": count, "plain": plain,
    "drop": drop, "interval": interval, "number": number,
    "lenet5_params": _defined(lenet5_params),
}  # fmt: skip


# --- The card -------------------------------------------------------------------------------


@functools.cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # Markdown, not HTML
    )
    env.filters.update(FILTERS)
    return env


def front_matter(facts: CardFacts) -> dict[str, Any]:
    """The card's YAML metadata, ``model-index`` in Hugging Face's schema."""
    m = facts.metrics

    def result(split: str, prefix: str, label: str) -> dict[str, Any]:
        return {
            "task": {"type": "image-classification", "name": "Image Classification"},
            "dataset": {"type": "mnist", "name": "MNIST", "split": split},
            "metrics": [
                {"type": "accuracy", "value": float(m[f"{prefix}_accuracy"]),
                 "name": f"{label} accuracy"},
                {"type": "loss", "value": float(m[f"{prefix}_loss"]), "name": f"{label} loss"},
            ],
        }  # fmt: skip

    return {
        "license": facts.license,
        "library_name": "keras",
        "tags": list(TAGS),
        "datasets": ["mnist"],
        "metrics": ["accuracy"],
        "model-index": [
            {
                "name": facts.name,
                "results": [
                    result("test", "test", "Test"),
                    result("validation", "val", "Validation"),
                ],
            }
        ],
    }


def render(facts: CardFacts) -> str:
    """The card: YAML front matter (yaml.safe_dump) and the Markdown body (card.md.j2).
    A fact the template needs and ``facts`` lacks raises :class:`jinja2.UndefinedError`."""
    context = {f.name: getattr(facts, f.name) for f in dataclasses.fields(facts)}
    robustness = dict(facts.robustness or {})
    context |= {
        "params": dict(facts.params),
        "metrics": dict(facts.metrics),
        "tags": dict(facts.tags),
        "gate": dict(facts.gate or {}),
        "robustness": robustness,
        "weakest": sorted(robustness.items(), key=lambda kv: kv[1])[:WEAKEST_SHOWN],
    }
    body = environment().get_template(TEMPLATE).render(context)
    meta = yaml.safe_dump(front_matter(facts), sort_keys=False, allow_unicode=True)
    return f"---\n{meta}---\n\n{body}"


# MLflow keeps a model version's description in a VARCHAR(5000) column (PostgreSQL
# enforces it; SQLite does not).
DESCRIPTION_LIMIT = 5000
# Dropped first when the card is too long for the registry page, least needed there first.
_SHORTENED = ("### Out of scope", "## Training procedure", "## Intended use", "## Training data")


def description(card: str, limit: int = DESCRIPTION_LIMIT) -> str:
    """The card as the registry page shows it: without the YAML front matter (the page
    shows it as text) and, if it is still over ``limit`` characters, without whole
    sections (least needed there first), saying where the full card is."""
    body = card.split("\n---\n", 1)[1].lstrip("\n") if card.startswith("---\n") else card
    footer = (
        "\n*Shortened for the registry: the full card is `data/register/card.md` in git and "
        "the run's `card.md` artifact.*\n"
    )
    dropped = []
    for heading in _SHORTENED:
        if len(body) <= limit:
            break
        body, gone = _drop_section(body, heading)
        dropped += [heading] if gone else []
    if dropped:
        body = body.rstrip("\n") + "\n" + footer
    if len(body) > limit:  # still too long: cut at a line, never mid-word
        body = body[: limit - len(footer)].rsplit("\n", 1)[0] + "\n" + footer
    return body


def _drop_section(text: str, heading: str) -> tuple[str, bool]:
    """``text`` without the section ``heading`` (up to the next heading of its level or
    higher)."""
    lines = text.splitlines(keepends=True)
    level = len(heading) - len(heading.lstrip("#"))
    try:
        start = next(i for i, line in enumerate(lines) if line.rstrip() == heading)
    except StopIteration:
        return text, False
    end = next(
        (i for i in range(start + 1, len(lines))
         if lines[i].startswith("#") and len(lines[i]) - len(lines[i].lstrip("#")) <= level),
        len(lines),
    )  # fmt: skip
    return "".join(lines[:start] + lines[end:]), True


def missing(facts: CardFacts, reason: str) -> str:
    """The card of a version whose run lacks a fact the card shows (a run logged by hand,
    or before the card existed): what it is, and why there is no more."""
    return (
        f"# {facts.name} version {facts.version}\n\n"
        f"No model card: its MLflow run `{facts.run_id}` lacks a fact the card shows "
        f"({reason}). Runs of this pipeline's train and evaluate stages log them all.\n"
    )
