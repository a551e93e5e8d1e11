"""Ranking runs: best validation metric first, then the lower loss, then the newest; no
metric last; only runs with a logged model compete.

(tests/core/test_promotion.py has the basic ranking cases.)
"""

import json
import math

import numpy as np
import pandas as pd
import pytest

from pipeline.core.promotion import (
    CANDIDATE_FILTER,
    MODEL_COLUMN,
    Paired,
    candidate_filter,
    decide,
    decide_slices,
    gate_record,
    gate_tags,
    judge,
    loss_of,
    lower_bound,
    order,
    paired,
    rank_runs,
    reusable,
    slice_record,
    wilson,
)

NAN = float("nan")


def runs(*rows):
    """A table shaped like ``mlflow.search_runs``: (run_id, minute, val_acc, val_loss, model)."""
    t0 = pd.Timestamp("2026-01-01", tz="UTC")
    return pd.DataFrame(
        {
            "run_id": [r[0] for r in rows],
            "start_time": [t0 + pd.Timedelta(minutes=r[1]) for r in rows],
            "metrics.val_accuracy": [r[2] for r in rows],
            "metrics.val_loss": [r[3] for r in rows],
            "metrics.test_accuracy": [0.9] * len(rows),
            MODEL_COLUMN: [r[4] for r in rows],
        }
    )


def ids(df):
    return list(df["run_id"])


def test_model_column_is_the_model_uri_tag():
    assert MODEL_COLUMN == "tags.model.uri"


def test_best_val_accuracy_first():
    df = runs(("a", 0, 0.97, 0.1, "m"), ("b", 1, 0.99, 0.1, "m"), ("c", 2, 0.98, 0.1, "m"))
    assert ids(order(df)) == ["b", "c", "a"]


def test_ties_go_to_the_lower_loss_then_the_newer_run():
    df = runs(
        ("old_low", 0, 0.99, 0.05, "m"),
        ("high", 5, 0.99, 0.20, "m"),
        ("new_low", 9, 0.99, 0.05, "m"),
        ("worse", 10, 0.98, 0.01, "m"),
    )
    assert ids(order(df)) == ["new_low", "old_low", "high", "worse"]


def test_runs_without_the_metric_or_loss_come_last():
    df = runs(
        ("none", 9, NAN, NAN, "m"),
        ("noloss", 8, 0.99, NAN, "m"),
        ("ok", 0, 0.99, 0.1, "m"),
        ("low", 1, 0.5, 0.1, "m"),
    )
    assert ids(order(df)) == ["ok", "noloss", "low", "none"]


def test_order_keeps_runs_without_a_model_rank_runs_drops_them():
    df = runs(("sweep", 0, 0.995, 0.01, None), ("full", 1, 0.99, 0.1, "models:/m-1"))
    assert ids(order(df)) == ["sweep", "full"]
    assert ids(rank_runs(df)) == ["full"]
    assert rank_runs(runs(("sweep", 0, 0.99, 0.1, None))).empty


def test_another_metric_ranks_by_its_own_loss():
    df = runs(("a", 0, 0.99, 0.1, "m"), ("b", 1, 0.98, 0.1, "m"))
    df["metrics.test_accuracy"] = [0.97, 0.97]
    df["metrics.test_loss"] = [0.2, 0.1]
    assert ids(order(df, "test_accuracy")) == ["b", "a"]
    assert ids(rank_runs(df, "test_accuracy")) == ["b", "a"]


def test_order_copes_with_missing_columns():
    df = pd.DataFrame({"run_id": ["a", "b"], "metrics.val_accuracy": [0.5, 0.9]})
    assert ids(order(df)) == ["b", "a"]  # no loss, no start_time
    assert "metrics.val_loss" not in df  # the caller's table is not changed


def test_order_of_an_empty_table():
    assert order(runs()).empty and rank_runs(runs()).empty


def test_loss_of():
    assert loss_of("val_accuracy") == "val_loss"
    assert loss_of("test_accuracy") == "test_loss"


def test_rank_runs_orders_by_accuracy_then_loss_then_newest():
    t = pd.Timestamp("2026-01-01", tz="UTC")
    runs = pd.DataFrame(
        {
            "run_id": ["a", "b", "c", "d", "e"],
            "metrics.test_accuracy": [0.98, 0.99, 0.99, 0.99, 0.999],
            "metrics.test_loss": [0.05, 0.04, 0.03, 0.03, 0.01],
            "start_time": [t, t, t, t + pd.Timedelta(1, "s"), t],
            "tags.model.uri": ["m-a", "m-b", "m-c", "m-d", None],  # e has no model
        }
    )
    assert rank_runs(runs, "test_accuracy")["run_id"].tolist() == ["d", "c", "b", "a"]


def test_rank_runs_on_validation_by_default_and_val_loss_breaks_ties():
    t = pd.Timestamp("2026-01-01", tz="UTC")
    runs = pd.DataFrame(
        {
            "run_id": ["a", "b", "c"],
            "metrics.val_accuracy": [0.990, 0.992, 0.992],
            "metrics.val_loss": [0.03, 0.05, 0.04],
            "metrics.test_accuracy": [0.995, 0.980, 0.981],  # a: best on test, ignored
            "metrics.test_loss": [0.01, 0.09, 0.08],
            "start_time": [t, t, t],
            "tags.model.uri": ["m-a", "m-b", "m-c"],
        }
    )
    assert rank_runs(runs)["run_id"].tolist() == ["c", "b", "a"]


# --- the paired test --------------------------------------------------------------------


def test_paired_counts_only_the_images_where_the_models_disagree():
    y = np.array([0, 1, 2, 3, 4, 5])
    champion = np.array([0, 1, 2, 9, 9, 5])  # wrong on 3 and 4
    candidate = np.array([0, 9, 2, 3, 4, 9])  # wrong on 1 and 5
    assert paired(y, champion, candidate) == Paired(
        6, champion_only=2, candidate_only=2, both_right=2
    )
    with pytest.raises(ValueError, match="same"):
        paired(y, champion[:5], candidate)


def test_exact_mcnemar_matches_textbook_tables():
    # The issue's own figures: 144/138 and 139/138 discordant pairs: p = 0.77 and 1.00.
    assert Paired(10_000, 144, 138).p_value == pytest.approx(0.766, abs=5e-4)
    assert Paired(10_000, 138, 139).p_value == pytest.approx(1.0)
    # b = 1, c = 9 of 10: two-sided exact p = 2 * (1 + 10) / 2**10 = 0.021484375
    assert Paired(100, 1, 9).p_value == pytest.approx(22 / 1024)
    assert Paired(100, 0, 0).p_value == 1.0
    from scipy.stats import binomtest

    assert Paired(500, 6, 14).p_value == pytest.approx(binomtest(14, 20, 0.5).pvalue)


def test_exact_mcnemar_equals_scipy_binomtest_on_every_split():
    """Twice the smaller tail is binomtest's two-sided p for p = 1/2, ties and large n too."""
    from scipy.stats import binomtest, norm

    for discordant in [*range(1, 61), 199, 1000, 4321]:
        for c in sorted({0, 1, discordant // 3, discordant // 2, discordant - 1, discordant}):
            got = Paired(10_000, discordant - c, c).p_value
            expected = binomtest(c, discordant, 0.5).pvalue
            assert got == pytest.approx(expected, rel=1e-9), (c, discordant)
    # Wilson's 95 % interval of 50/100 (textbook: 0.4038 to 0.5962), and its z at 99 %
    assert wilson(50, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    z99 = norm.ppf(0.995)
    assert wilson(50, 100, 0.99)[1] == pytest.approx(
        (0.5 + z99**2 / 200 + z99 * math.sqrt(0.0025 + z99**2 / 40_000)) / (1 + z99**2 / 100)
    )


def test_gain_and_its_interval_in_points():
    result = Paired(10_000, 6, 14)
    assert result.gain == pytest.approx(0.08)
    low, high = result.gain_interval()
    # Wald for paired proportions: 1.96 * sqrt(20 - 8**2 / 10000) / 10000, in points
    half = 1.959964 * math.sqrt(20 - 64 / 10_000) / 10_000 * 100
    assert (low, high) == pytest.approx((0.08 - half, 0.08 + half), abs=1e-6)


def test_decide_promotes_only_a_significant_large_enough_gain():
    assert decide(None, 0.05, 0).decision == "first"
    kept = decide(Paired(10_000, 6, 14), 0.05, 0)
    assert kept.decision == "kept" and not kept.promote
    assert kept.reason == "+0.08 pts (14 vs 6 disagreements, p = 0.115 >= 0.05)"
    strong = Paired(10_000, 10, 40)
    assert decide(strong, 0.05, 0).decision == "promoted"
    assert decide(strong, 1e-9, 0).decision == "kept"  # an absurdly strict alpha
    assert "min_gain" in decide(strong, 0.05, 0.5).reason  # +0.30 pts < 0.5 pts
    worse = decide(Paired(10_000, 40, 10), 0.05, 0)
    assert worse.decision == "kept" and "not better" in worse.reason


def test_wilson_interval_known_values():
    # Newcombe (1998), table I, method 3 (Wilson score): 81/263 -> [0.2553, 0.3662]
    assert wilson(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert wilson(98, 100) == pytest.approx((0.9300, 0.9945), abs=1e-4)
    assert wilson(0, 10)[0] == pytest.approx(0.0, abs=1e-12)
    assert wilson(10, 10)[1] == pytest.approx(1.0, abs=1e-12)
    assert wilson(0, 0) == (0.0, 1.0)


def test_gate_record_and_tags():
    record = gate_record(Paired(10_000, 6, 14), "test", 10_000, 0.05, 0.0, against="5")
    assert record["discordant"] == [6, 14] and record["against"] == "5"
    assert record["images"] == {"split": "test", "count": 10_000}
    assert record["p_value"] == pytest.approx(0.115, abs=1e-3)
    tags = gate_tags({**record, "decision": "kept"})
    assert tags["gate.decision"] == "kept" and tags["gate.discordant"] == "6, 14"
    assert tags["gate.images"] == "test (10000)"
    assert json.loads(tags["gate.record"])["discordant"] == [6, 14]
    assert gate_record(None, "test", 0, 0.05, 0.0)["images"]["count"] == 0


def test_an_earlier_gate_is_reused_only_for_the_same_champion_and_images():
    record = gate_record(Paired(10_000, 50, 6694), "test", 10_000, 0.05, 99.0, "1", md5="abc")
    assert record["images"] == {"split": "test", "count": 10_000, "md5": "abc"}
    assert reusable(record, "1", "abc") == Paired(10_000, 50, 6694)
    assert reusable(record, "2", "abc") is None  # another champion
    assert reusable(record, "1", "def") is None  # other test images
    assert reusable(gate_record(None, "test", 0, 0.05, 0.0, "1", md5="abc"), "1", "abc") is None
    legacy = {k: v for k, v in record.items() if k != "images"} | {
        "images": {"split": "test", "count": 10_000}
    }
    assert reusable(legacy, "1", "abc") is None  # recorded before the hash was: gate again


def test_reused_counts_are_decided_under_todays_policy():
    counts = reusable(
        gate_record(Paired(10_000, 50, 6694), "test", 10_000, 0.05, 99.0, "1", md5="m"), "1", "m"
    )
    assert decide(counts, 0.05, 99.0).decision == "kept"
    assert "register.min_gain 99" in decide(counts, 0.05, 99.0).reason
    assert decide(counts, 0.05, 0.0).decision == "promoted"


# --- every slice ----------------------------------------------------------------------


def test_a_candidate_better_on_production_and_even_on_test_is_promoted():
    test = Paired(10_000, 20, 22, 9_800)  # +0.02 pts: noise
    production = Paired(300, 2, 40, 200)  # +12.7 pts
    decision, verdicts = decide_slices({"test": test, "production": production}, 0.05, 0.0,
                                       0.5, 100)  # fmt: skip
    assert decision.promote and verdicts["production"].status == "better"
    assert verdicts["test"].status == "even" and "production" in decision.reason


def test_a_loss_beyond_max_loss_on_any_slice_blocks_even_a_big_gain():
    test = Paired(10_000, 150, 40, 9_700)  # -1.1 pts on MNIST
    production = Paired(300, 2, 40, 200)
    decision, verdicts = decide_slices({"test": test, "production": production}, 0.05, 0.0,
                                       0.5, 100)  # fmt: skip
    assert decision.decision == "kept" and verdicts["test"].status == "worse"
    assert "its margin, 0.5 pts" in decision.reason


def test_the_bound_is_one_sided_not_the_point_estimate():
    """-0.3 pts measured is within max_loss 0.5, yet on 400 images the bound is far lower."""
    small = Paired(400, 8, 7, 380)
    assert small.gain == pytest.approx(-0.25)
    assert lower_bound(small, 0.05) < -0.5
    assert judge("production", small, 0.05, 0.0, 0.5, 100).status == "worse"
    big = Paired(100_000, 800, 550, 98_000)  # -0.25 pts on 100,000 images: tight
    assert judge("test", big, 0.05, 0.0, 0.5, 100).status == "even"


def test_a_slice_too_small_says_so_and_does_not_block():
    test = Paired(10_000, 20, 80, 9_800)  # +0.6 pts, p < 0.05
    tiny = Paired(30, 10, 0, 15)  # would be -33 pts
    decision, verdicts = decide_slices({"test": test, "production": tiny}, 0.05, 0.0, 0.5, 100)
    assert decision.promote and verdicts["production"].status == "small"
    assert "too few" in decision.reason


def test_better_on_no_slice_is_kept_and_test_alone_decides_as_before():
    even = Paired(10_000, 20, 22, 9_800)
    decision, _ = decide_slices({"test": even, "production": Paired(5_000, 3, 4, 4_900)}, 0.05,
                                0.0, 0.5, 100)  # fmt: skip
    assert decision.decision == "kept" and "better on no slice" in decision.reason
    alone, _ = decide_slices({"test": even}, 0.05, 0.0, 0.5, 100)
    assert alone == decide(even, 0.05, 0.0)


def test_a_slice_record_holds_both_accuracies_interval_and_p():
    result = Paired(300, 2, 40, 200)
    verdict = judge("production", result, 0.05, 0.0, 0.5, 100)
    record = slice_record(result, verdict)
    assert record["champion_accuracy"] == pytest.approx(202 / 300, abs=1e-6)
    assert record["candidate_accuracy"] == pytest.approx(240 / 300, abs=1e-6)
    low, high = record["accuracy_diff_ci95_pts"]
    assert low < record["accuracy_diff_pts"] < high and record["p_value"] < 1e-6
    assert record["status"] == "better"
    tags = gate_tags({"slices": {"production": record}})
    assert tags["gate.slice.production"].startswith("better: +12.67 pts")


def test_with_labelled_images_only_runs_of_that_feedback_split_compete():
    assert candidate_filter(None) == CANDIDATE_FILTER
    assert candidate_filter("abc").endswith("and tags.`data.feedback.md5` = 'abc'")


def test_each_slice_has_its_own_margin():
    """benchmarks.loop's retrain after a poisoner was revoked: better on test, +2.2 pts on
    277 production images whose bound (-1.1) a 0.5-point margin cannot accept."""
    test, production = Paired(10_000, 20, 56, 9_850), Paired(277, 8, 14, 231)
    one_margin, _ = decide_slices({"test": test, "production": production}, 0.05, 0.0, 0.5, 100)
    assert one_margin.decision == "kept"
    own, verdicts = decide_slices({"test": test, "production": production}, 0.05, 0.0,
                                  {"test": 0.5, "production": 3.0}, 100)  # fmt: skip
    assert own.promote and verdicts["production"].status == "even"


def test_an_alpha_too_small_to_pass_still_gives_a_bound():
    result = Paired(10_000, 20, 80, 9_800)
    assert lower_bound(result, 1e-300) < lower_bound(result, 0.05) < result.gain
    assert judge("test", result, 1e-300, 0.0, 0.5, 100).status == "even"  # p >= alpha
