"""The model card: valid front matter, and every number in the body equals its source."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from pathlib import Path

import jinja2
import numpy as np
import pytest
import yaml

from pipeline.core import card
from pipeline.core.promotion import Paired, decide, gate_record

ROOT = Path(__file__).resolve().parents[2]

# A standalone number: not part of an identifier (lenet5, C1, shift_2px, md5, hex hashes) nor
# of a dotted address (127.0.0.1); signs, thousands separators and exponents included.
NUMBER = re.compile(
    r"(?<![\w.])[-+]?"  # not inside a word or an address
    r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:e[-+]?\d+)?"
    r"(?!\w|\.\d)"
)


def numbers(*texts: str) -> list[str]:
    return [n for t in texts for n in NUMBER.findall(t)]


# --- A small, consistent set of facts: 40 test images, 4 mistakes ---------------------------

ACTUAL = np.repeat(np.arange(10), 4)
PREDICTED = ACTUAL.copy()
PREDICTED[[12, 13, 29, 38]] = [5, 5, 1, 4]  # 3->5 twice, 7->1, 9->4
PARAMS = {  # as MLflow stores them: strings
    "model.activation": "relu", "model.pooling": "average", "model.padding": "2",
    "preprocess.val_size": "500", "preprocess.seed": "7",
    "train.optimizer": "sgd", "train.learning_rate": "0.05", "train.momentum": "0.9",
    "train.nesterov": "True", "train.weight_decay": "0.0", "train.lr_schedule": "step",
    "train.lr_decay_rate": "0.5", "train.lr_decay_epochs": "4", "train.warmup_epochs": "0",
    "train.batch_size": "64", "train.epochs": "12", "train.seed": "3",
    "train.augment_shift": "2", "train.augment_rotate": "10", "train.label_smoothing": "0.1",
    "train.loop": "fit", "train.max_samples": "None", "train.precision": "mixed_bfloat16",
}  # fmt: skip
METRICS = {
    "test_accuracy": 0.9,  # 36 of 40
    "test_loss": 0.31234,
    "val_accuracy": 0.875,
    "val_loss": 0.40111,
    "train_seconds": 12.5,
}
MD5 = {"train": "aa" * 16, "val": "bb" * 16, "test": "cc" * 16}
TAGS = {
    "git.commit": "f00dfeed" * 5,
    "git.dirty": "true",
    "dvc.exp_name": "lean-pike",
    "device": "CPU",
    **{f"data.{s}.md5": h for s, h in MD5.items()},
}


def per_class_table() -> list[dict]:
    rows, actual, predicted = [], ACTUAL, PREDICTED
    for d in range(10):
        tp = int(((actual == d) & (predicted == d)).sum())
        precision = tp / max(1, int((predicted == d).sum()))
        recall = tp / int((actual == d).sum())
        f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
        rows.append({"digit": d, "precision": precision, "recall": recall, "f1": f1,
                     "support": int((actual == d).sum())})  # fmt: skip
    return rows


def make_facts(full: bool = True) -> card.CardFacts:
    result = Paired(n=40, champion_only=0, candidate_only=7)
    decision = decide(result, 0.05, 0.0)
    gate = gate_record(result, "test", 40, 0.05, 0.0, against="1")
    gate |= {"decision": decision.decision, "reason": decision.reason}
    evaluation = {"test_accuracy": 0.9, "robust": {"shift_2px_accuracy": 0.85,
                                                  "rotate_15_accuracy": 0.625}}  # fmt: skip
    return card.CardFacts(
        name="lenet5-mnist",
        version="2",
        run_id="deadbeef" * 4,
        params=PARAMS,
        metrics=METRICS,
        tags=TAGS if full else {"git.commit": TAGS["git.commit"]},
        data_md5=MD5,
        split_sizes={"train": 4500, "val": 500, "test": 40},
        per_class=card.per_class_rows(per_class_table()),
        confusions=card.top_confusions(ACTUAL, PREDICTED),
        robustness=card.robustness_of(evaluation) if full else None,
        gate=gate if full else None,
    )


def sections(text: str) -> dict[str, str]:
    """The body by ``## `` section (``""``: the title and intro)."""
    body = text.split("\n---\n", 1)[1]
    parts = re.split(r"^## (.+)$", body, flags=re.MULTILINE)
    return {"": parts[0], **dict(zip(parts[1::2], parts[2::2], strict=True))}


# --- What each section must show: its facts, formatted as the card formats them ------------


def expected(f: card.CardFacts) -> dict[str, list[str]]:
    p, m, sizes, clean = f.params, f.metrics, f.split_sizes, f.metrics["test_accuracy"]
    padding = int(p["model.padding"])
    weakest = sorted((f.robustness or {}).items(), key=lambda kv: kv[1])[:3]
    top = f.confusions[0]
    out = {
        "": numbers("LeNet-5 1998", f.version, f.version, card.pct(clean)),
        "Model details": numbers(
            "LeNet-5 1998 5×5 6 5×5 16 120 84 10 28×28 0–255 [0, 1]",  # the architecture
            str(padding),
            f"{28 + 2 * padding}×{28 + 2 * padding}",
            card.count(card.lenet5_params(padding)),
            str(padding),
            f.version,
        ),
        "Intended use": numbers(
            "28×28 20×20",
            *(card.pct(a) + " " + card.drop(a, clean) for _, a in weakest),
            f"{top.actual} {top.predicted} {card.count(top.count)}",
        ),
        "Training data": numbers(
            card.plain(p["preprocess.val_size"]),
            card.plain(p["preprocess.seed"]),
            *(card.count(sizes[s]) for s in f.data_md5),
        ),
        "Training procedure": numbers(
            *(
                card.plain(p[k])
                for k in (
                    "train.momentum",
                    "train.learning_rate",
                    "train.lr_decay_rate",
                    "train.lr_decay_epochs",
                    "train.batch_size",
                    "train.epochs",
                    "train.seed",
                    "train.augment_shift",
                    "train.augment_rotate",
                    "train.label_smoothing",
                )
            ),
            card.plain(m["train_seconds"]),
        ),
        "Evaluation": numbers(
            card.count(sizes["test"]),
            card.pct(clean),
            "95 %",
            card.interval(clean, sizes["test"]),
            card.loss(m["test_loss"]),
            card.count(sizes["val"]),
            card.pct(m["val_accuracy"]),
            card.loss(m["val_loss"]),
            *(
                f"{r.digit} {card.pct(r.precision)} {card.pct(r.recall)} {card.pct(r.f1)} "
                f"{card.count(r.support)}"
                for r in f.per_class
            ),
            *(f"{c.actual} {c.predicted} {card.count(c.count)}" for c in f.confusions),
        ),
        "Robustness": numbers(
            card.pct(clean) if f.robustness else "",
            *(card.pct(a) + " " + card.drop(a, clean) for a in (f.robustness or {}).values()),
        ),
        "Promotion": [],
        "How to use": numbers("10 28×28 0–255", f.version, "5001"),
    }
    if not f.robustness:
        out["Intended use"] = numbers("28×28 20×20", f"{top.actual} {top.predicted}",
                                      card.count(top.count))  # fmt: skip
    if f.gate:
        g = f.gate
        out["Promotion"] = numbers(
            g["reason"],
            str(g["against"]),
            card.count(g["images"]["count"]),
            card.plain(g["alpha"]),
            card.plain(g["min_gain"]),
            card.pval(g["p_value"]),
            card.count(g["discordant"][0]),
            card.count(g["discordant"][1]),
            card.pts(g["accuracy_diff_pts"]),
            "95 %",
            *(card.pts(x) for x in g["accuracy_diff_ci95_pts"]),
        )
    return out


def wrong_numbers(facts: card.CardFacts, text: str) -> dict[str, tuple[list, list]]:
    """Section -> (numbers on the card but not in the facts, facts missing from the card)."""
    found, want = sections(text), expected(facts)
    assert list(found) == list(want)  # the sections, in the card's order
    diffs = {}
    for title, section in found.items():
        have, should = Counter(numbers(section)), Counter(want[title])
        if have != should:
            diffs[title] = (sorted((have - should).elements()), sorted((should - have).elements()))
    return diffs


@pytest.mark.parametrize("full", [True, False], ids=["all-facts", "no-robustness-no-gate"])
def test_every_number_in_the_card_equals_its_source(full):
    facts = make_facts(full)
    assert wrong_numbers(facts, card.render(facts)) == {}


def test_the_number_check_catches_a_wrong_or_extra_number():
    facts = make_facts()
    text = card.render(facts)
    assert wrong_numbers(facts, text.replace("61,706", "61,707")) == {
        "Model details": (["61,707"], ["61,706"])
    }
    assert wrong_numbers(facts, text.replace("loss 0.3123", "loss 0.3123 (0.31)")) == {
        "Evaluation": (["0.31"], [])
    }


def test_identifiers_appear_verbatim():
    facts = make_facts()
    text = card.render(facts)
    for value in (facts.run_id, facts.tags["git.commit"], facts.tags["dvc.exp_name"],
                  *facts.data_md5.values(), facts.gate["reason"], "models:/lenet5-mnist/2",
                  'mlflow.pyfunc.load_model("models:/lenet5-mnist@champion")',
                  "python -m pipeline.predict digit.png",
                  "mlflow models serve -m models:/lenet5-mnist@champion"):  # fmt: skip
        assert value in text
    assert "dirty" in sections(text)["Model details"]
    assert "**Numerics:** `mixed_bfloat16`: bfloat16 math on float32 weights" in text
    assert "`shift_2px` | 85.00 % | 5.00 |" in text  # the drop vs clean, in points
    assert "shifts ± 2 px, rotations ± 10°" in text
    assert "| 3 | 5 | 2 |" in text  # the top confusion


def test_front_matter_is_yaml_whose_model_index_holds_the_facts():
    facts = make_facts()
    text = card.render(facts)
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["library_name"] == "keras"
    assert meta["datasets"] == ["mnist"] and meta["metrics"] == ["accuracy"]
    assert "image-classification" in meta["tags"] and meta["license"] == facts.license
    (entry,) = meta["model-index"]
    assert entry["name"] == facts.name
    by_split = {r["dataset"]["split"]: r for r in entry["results"]}
    assert set(by_split) == {"test", "validation"}
    for split, prefix in (("test", "test"), ("validation", "val")):
        result = by_split[split]
        assert result["task"]["type"] == "image-classification"
        assert result["dataset"]["type"] == "mnist" and result["dataset"]["name"] == "MNIST"
        values = {x["type"]: x["value"] for x in result["metrics"]}
        assert values == {
            "accuracy": facts.metrics[f"{prefix}_accuracy"],
            "loss": facts.metrics[f"{prefix}_loss"],
        }


def test_missing_robustness_and_gate_render_as_such():
    found = sections(card.render(make_facts(full=False)))
    assert "not measured" in found["Robustness"]
    assert "not measured" in found["Intended use"]
    assert "No gate recorded" in found["Promotion"]
    assert "none (a workspace run)" in found["Model details"]
    assert "dirtiness unknown" in found["Model details"]


@pytest.mark.parametrize(
    "change",
    [
        {"params": {k: v for k, v in PARAMS.items() if k != "train.optimizer"}},
        {"metrics": {k: v for k, v in METRICS.items() if k != "test_loss"}},
        {"split_sizes": {"train": 4500, "test": 40}},
        {"tags": {}},  # no git.commit
    ],
    ids=["param", "metric", "split-size", "tag"],
)
def test_a_missing_fact_fails_instead_of_rendering_blank(change):
    with pytest.raises(jinja2.UndefinedError):
        card.render(dataclasses.replace(make_facts(), **change))


def test_number_formats():
    assert card.pct(0.9826) == "98.26 %"
    assert card.pval(0.0123456) == "0.0123" and card.pval(1.0) == "1.00"
    assert card.pval(1.23456e-5) == "1.23e-05"
    assert card.pts(0.18) == "+0.18" and card.pts(-0.05) == "-0.05"
    assert card.count(10000) == "10,000"
    assert card.plain("0.0") == card.plain(0.0) == "0" and card.plain("0.002") == "0.002"
    assert card.drop(0.9123, 0.9826) == "7.03"


def test_dvc_hashes_of_the_real_lock():
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())
    outs = {o["path"]: o["md5"] for o in lock["stages"]["preprocess"]["outs"]}
    hashes = card.dvc_hashes(lock)
    assert hashes == {s: outs[f"data/prepared/{s}.npz"] for s in ("train", "val", "test")}
    assert all(re.fullmatch(r"[0-9a-f]{32}", h) for h in hashes.values())


def test_dvc_hashes_prefer_what_the_model_used():
    lock = {
        "stages": {
            "preprocess": {"outs": [{"path": "data/prepared/train.npz", "md5": "new"},
                                    {"path": "data/prepared/test.npz", "md5": "t"},
                                    {"path": "data/prepared/summary.json", "md5": "s"}]},
            "train": {"deps": [{"path": "data/prepared/train.npz", "md5": "used"}]},
        }
    }  # fmt: skip
    assert card.dvc_hashes(lock) == {"train": "used", "test": "t"}
    assert card.dvc_hashes({}) == {}


def test_top_confusions_most_frequent_first_ties_by_digit():
    got = card.top_confusions([3, 3, 7, 9, 1, 2, 2], [5, 5, 1, 4, 1, 8, 8], k=3)
    assert got == (card.Confusion(2, 8, 2), card.Confusion(3, 5, 2), card.Confusion(7, 1, 1))
    assert card.top_confusions([1, 2], [1, 2]) == ()


def test_robustness_of_accepts_nested_and_prefixed_keys():
    nested = {"test_accuracy": 0.98, "robust": {"shift_2px": {"accuracy": 0.9, "loss": 0.3},
                                                "clean_accuracy": 0.98}}  # fmt: skip
    assert card.robustness_of(nested) == {"shift_2px": 0.9}
    prefixed = {"robust.shift_2px_accuracy": 0.9, "robust/rotate_15_accuracy": 0.8,
                "robustness.noise_loss": 1.2, "test_accuracy": 0.98}  # fmt: skip
    assert card.robustness_of(prefixed) == {"shift_2px": 0.9, "rotate_15": 0.8}
    assert card.robustness_of({"test_accuracy": 0.98}) is None


def test_lenet5_params_match_the_architecture():
    assert card.lenet5_params(2) == 61_706  # README's table
    assert card.lenet5_params(0) == 44_426


def test_description_fits_the_registry_and_keeps_what_matters():
    """MLflow keeps at most 5,000 characters of a version's description (PostgreSQL says
    so with an error): no front matter, then whole sections dropped, least needed first."""
    text = card.render(make_facts())
    short = card.description(text, limit=len(text) // 2)
    assert len(short) <= len(text) // 2 and not short.startswith("---")
    assert "## Evaluation" in short and "## Promotion" in short
    assert "### Out of scope" not in short and "full card is `data/register/card.md`" in short
    roomy = card.description(text, limit=100_000)
    assert roomy == text.split("\n---\n", 1)[1].lstrip("\n")  # only the front matter goes


def test_a_run_without_the_facts_gets_a_card_that_says_so():
    facts = dataclasses.replace(make_facts(), params={})
    with pytest.raises(jinja2.UndefinedError):
        card.render(facts)
    text = card.missing(facts, "'dict object' has no attribute 'model.padding'")
    assert text.startswith(f"# {facts.name} version {facts.version}\n")
    assert facts.run_id in text and "model.padding" in text
