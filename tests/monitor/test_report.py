"""report.json and report.html from a made-up result."""

import json

import numpy as np

from pipeline.monitor.report import LEAST_SURE, write

RESULT = {
    "model_name": "lenet5-mnist", "model_version": "3", "run_id": "r", "images": 1000,
    "window": {"first": "2026-12-05 10:00:00", "last": "2026-12-05 11:00:00"},
    "drift": {"detected": True, "share": 0.6, "threshold_share": 0.5,
              "features": {"mean_ink": {"test": "ks_p_value", "statistic": 0.001,
                                        "threshold": 0.05, "drifted": True}}},
    "accuracy": {"method": "ATC", "estimated": 0.42, "estimated_ci95": [0.39, 0.45],
                 "average_confidence": 0.8, "reference": 0.98, "labeled": None,
                 "labeled_images": 0},
}  # fmt: skip


def test_json_keys_and_html_parts(tmp_path):
    steps = [{"window": i, "images": 500, "drift_share": 0.6, "drift_detected": True,
              "estimated_accuracy": 0.4, "labeled_accuracy": None} for i in range(2)]  # fmt: skip
    html = write(tmp_path, RESULT, steps)
    out = json.loads((tmp_path / "report.json").read_text())
    for key in ("model_version", "images", "drift", "accuracy", "windows"):
        assert key in out
    assert out["drift"]["features"]["mean_ink"]["drifted"] is True
    text = html.read_text()
    assert 'id="drift-table"' in text and "mean_ink" in text and "Drift detected" in text
    assert 'id="over-time"' in text and "data:image/png;base64," in text
    assert "42.0 %" in text and "[39.0," in text


def test_one_window_has_no_chart(tmp_path):
    html = write(tmp_path, RESULT, [{"window": 0, "images": 1000, "drift_share": 0.6,
                                     "estimated_accuracy": 0.4}])  # fmt: skip
    assert 'id="over-time"' not in html.read_text()


def test_the_page_shows_distributions_images_and_the_least_sure(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (100, 28, 28), dtype=np.uint8)
    confidence = rng.random(100)
    views = {
        "columns": {"mean_ink": (rng.random(500), rng.random(100) + 0.5),
                    "predicted_digit": (rng.integers(0, 10, 500), rng.integers(0, 10, 100))},
        "pixels": pixels, "reference_images": pixels[:48], "confidence": confidence,
        "digit": rng.integers(0, 10, 100),
    }  # fmt: skip
    text = write(tmp_path, RESULT, [], views).read_text()
    for part in ('id="distributions"', 'id="window-images"', 'id="reference-images"',
                 'id="least-sure"'):  # fmt: skip
        assert part in text, part
    shown = text.split('id="least-sure"')[1]
    assert shown.count("<figure") == LEAST_SURE
    lowest = np.sort(confidence)[0]
    assert f"({100 * lowest:.0f} %)" in shown.split("</figure>")[0]  # the least sure first


def test_an_estimate_far_outside_the_reference_is_not_shown_as_if_trusted(tmp_path):
    untrusted = {**RESULT, "accuracy": {**RESULT["accuracy"], "trusted": False,
                                        "untrusted": "far outside the reference"}}  # fmt: skip
    text = write(tmp_path, untrusted, []).read_text()
    assert 'id="estimate-untrusted"' in text and "far outside the reference" in text
    assert "42.0 %" not in text and "Estimated accuracy" not in text
    assert "Estimated accuracy 42.0 %" in write(tmp_path, RESULT, []).read_text().replace("\n", " ")
