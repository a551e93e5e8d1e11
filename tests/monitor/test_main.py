"""pipeline.monitor on real traffic: clean and inverted test digits replayed through the
real service into the real prediction log, then read back, reported, logged to MLflow;
feedback labels measured and exported."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from pipeline.testing.project import (
    clone_of,
    feedback_key,
    run,
    scoring_service,
    send_label,
    stage_env,
)
from tests.stores import mlflow_client

pytestmark = pytest.mark.slow

NAME = "lenet5-mnist"
CHROMIUM = Path("/usr/bin/chromium")


def send(url: str, x: np.ndarray, per_request: int = 10) -> list[str]:
    """POST the images in requests of ``per_request``; the X-Request-Id of each."""
    ids = []
    for i in range(0, len(x), per_request):
        body = json.dumps({"inputs": x[i : i + per_request].tolist()}).encode()
        req = urllib.request.Request(f"{url}/invocations", body,
                                     {"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=30) as resp:
            ids.append(resp.headers["X-Request-Id"])
    return ids


def monitor(project, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "pipeline.monitor", *args], project, check=check)


@pytest.fixture(scope="module")
def replayed(smoke_project, tmp_path_factory):
    """1,000 clean test digits, 200 of them labelled back through /feedback, then 1,000
    inverted ones. In a seeded random order: MNIST's test file holds one population of
    writers first and another after, and its first 1,000 digits do drift from training's."""
    project = clone_of(smoke_project, tmp_path_factory.mktemp("monitored"))
    with np.load(project / "data/prepared/test.npz", allow_pickle=False) as z:
        order = np.random.default_rng(0).permutation(len(z["y"]))
        x, y = z["x"][order], z["y"][order]
    server = scoring_service(project, stage_env())
    with server:
        ids = send(server.url, x[:1000])
        key = feedback_key(project, "labeller")
        for k, rid in enumerate(ids[:20]):  # 200 labelled images: the first 20 requests
            for j in range(10):
                assert send_label(server.url, key, rid, int(y[10 * k + j]), j)[0] == 200
        clean = monitor(project, "--last", "1000", "--out", "clean")
        send(server.url, 255 - x[1000:2000])
    inverted = monitor(project, "--last", "1000", "--out", "inverted", "--fail-on-drift",
                       check=False)  # fmt: skip
    return project, x, y, clean, inverted


def report(project, out: str) -> dict:
    return json.loads((project / out / "report.json").read_text())


def test_clean_traffic_shows_no_drift_and_accuracy_as_measured(replayed):
    project, x, y, proc, _ = replayed
    out = report(project, "clean")
    assert out["images"] == 1000 and out["drift"]["detected"] is False, out["drift"]
    acc = out["accuracy"]
    low, high = acc["estimated_ci95"]
    assert low <= acc["estimated"] <= high
    assert acc["labeled_images"] == 200
    with sqlite3.connect(project / "predictions.db") as db:  # what the service answered
        answered = [d for (d,) in db.execute("SELECT digit FROM predictions ORDER BY id")]
    true = float(np.mean(np.asarray(answered[:1000]) == y[:1000]))
    # ATC on the smoke model (2,000 images, 2 epochs); benchmarks.monitor holds the
    # reference model to 3 points
    assert abs(acc["estimated"] - true) <= 0.05, (acc["estimated"], true)
    assert acc["labeled"] == pytest.approx(float(np.mean(np.asarray(answered[:200]) == y[:200])))
    assert set(out["drift"]["features"]) >= {"mean_ink", "thickness", "embedding_f6",
                                              "predicted_digit", "confidence"}  # fmt: skip
    assert "no drift" in proc.stderr


def test_inverted_digits_drift_and_fail_the_check(replayed):
    project, *_, proc = replayed
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert " ERROR drift detected" in proc.stderr
    out = report(project, "inverted")
    assert out["drift"]["detected"] is True and out["drift"]["share"] >= 0.5
    assert out["drift"]["features"]["mean_ink"]["drifted"]
    assert out["drift"]["features"]["embedding_f6"]["drifted"]
    assert out["accuracy"]["labeled"] is None  # no feedback for these
    assert (
        out["accuracy"]["trusted"] is False and "cannot be trusted" in out["accuracy"]["untrusted"]
    )
    assert report(project, "clean")["accuracy"]["trusted"] is True


def test_monitoring_runs_and_version_tags_in_mlflow(replayed):
    project, *_ = replayed
    client = mlflow_client(project)
    exp = client.get_experiment_by_name(f"{NAME}-monitoring")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) >= 2
    metrics = {k for r in runs for k in r.data.metrics}
    assert {"monitor/drift_share", "monitor/estimated_accuracy",
            "monitor/labeled_accuracy"} <= metrics  # fmt: skip
    champion = client.get_model_version_by_alias(NAME, "champion")
    assert champion.tags["monitor.drift_detected"] in ("true", "false")
    assert {r.data.tags["model.version"] for r in runs} == {str(champion.version)}
    steps = client.get_metric_history(runs[0].info.run_id, "monitor/window_drift_share")
    assert len(steps) == 2  # --last 1000 in windows of 500
    assert {a.path for a in client.list_artifacts(runs[0].info.run_id)} >= {"report.html"}


def test_feedback_is_measured_and_exported_as_a_split(replayed):
    project, x, y, *_ = replayed
    out = report(project, "clean")["accuracy"]
    monitor(project, "export", "--out", "feedback")
    with np.load(project / "feedback/feedback.npz", allow_pickle=False) as z:
        fx, fy = z["x"], z["y"]
    assert fx.shape == (200, 28, 28) and fx.dtype == np.uint8
    np.testing.assert_array_equal(fx, x[:200])
    np.testing.assert_array_equal(fy, y[:200])
    assert out["labeled_images"] == 200 and 0 <= out["labeled"] <= 1


def test_an_empty_window_or_an_unknown_version_is_one_line(replayed):
    project, *_ = replayed
    for args, words in ((["--since", "2999-01-01"], "no logged predictions"),
                        (["--version", "99"], "no logged predictions of version 99")):  # fmt: skip
        proc = monitor(project, *args, check=False)
        errors = [ln for ln in proc.stderr.splitlines() if " ERROR " in ln]
        assert proc.returncode == 1 and len(errors) == 1 and words in errors[0], proc.stderr


def test_the_html_report_shows_the_drift_table_and_the_chart(replayed, tmp_path):
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} not found (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(reason + " (required in CI)")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    project, *_ = replayed
    page_file = project / "inverted" / "report.html"
    with sync_playwright() as p:
        args = ["--headless", "--no-sandbox", "--disable-gpu"]
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=args)
        page = browser.new_page()
        page.goto(page_file.as_uri())
        assert "Drift detected" in page.inner_text("#verdict")
        rows = page.locator("#drift-table tr")
        assert rows.count() >= 10
        assert "embedding_f6" in page.inner_text("#drift-table")
        size = page.eval_on_selector("#over-time", "img => [img.naturalWidth, img.complete]")
        assert size[0] > 100 and size[1]
        assert "cannot be trusted" in page.inner_text("#estimate-untrusted")
        for picture in ("#distributions", "#window-images", "#reference-images"):
            width = page.eval_on_selector(picture, "img => img.complete && img.naturalWidth")
            assert width > 100, picture
        assert page.locator("#least-sure figure").count() == 24
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
