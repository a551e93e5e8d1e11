"""report.json and report.html from a made-up result."""

import json

from pipeline.monitor.report import write

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
