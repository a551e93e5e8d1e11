"""`python -m pipeline.ui` end to end, in a real browser: headless Chromium (Debian's
package, /usr/bin/chromium) driven by Playwright, in a new profile, on the URLs it prints
for a store with two pipeline runs and a 2-trial sweep. Screenshots go to /tmp/ui-*.png."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.testing.project import stage_env
from tests.stores import mlflow_client

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
# What works as root in a container; no GPU, no network beyond 127.0.0.1.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LABELS = ("runs", "compare", "model", "charts")
TIMEOUT_MS = 60_000  # the UI's first load on a busy 2-core machine


def _require(ok: bool, reason: str) -> None:
    if not ok:
        if os.environ.get("CI"):
            pytest.fail(reason + " (required in CI)")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    _require(CHROMIUM.exists(), f"{CHROMIUM} not found (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _require(False, "playwright not installed (pip install -e '.[dev]')")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def ui(ui_project):
    """`python -m pipeline.ui` running in the project; yields (label -> URL, process)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.ui"],
        cwd=ui_project,
        env=stage_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    links: dict[str, str] = {}
    deadline = time.monotonic() + 240
    try:
        while len(links) < len(LABELS) and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            label, _, url = line.partition(":")
            links[label] = url.strip()
        assert list(links) == list(LABELS), (links, proc.poll(), _stderr(proc))
        yield links, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _stderr(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        return "(still running)"
    return proc.stderr.read()[-2000:]


@pytest.fixture
def page(browser):
    """A page in a new context: a new browser profile (no local storage, no cookies)."""
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def _runs(project: Path) -> dict[str, object]:
    """run name -> run, from the store itself (an independent client)."""
    client = mlflow_client(project)
    exp = client.get_experiment_by_name("lenet5-mnist").experiment_id
    return {r.info.run_name: r for r in client.search_runs([exp])}


def _pipeline_runs(project: Path) -> dict[str, object]:
    return {n: r for n, r in _runs(project).items() if "test_accuracy" in r.data.metrics}


def test_prints_urls_on_a_local_server(ui):
    links, proc = ui
    assert proc.poll() is None
    port = links["runs"].split("/")[2].split(":")[1]
    for url in links.values():
        assert url.startswith(f"http://127.0.0.1:{port}/#/")


def test_runs_view_shows_training_runs_with_test_accuracy(ui, ui_project, page):
    from playwright.sync_api import expect

    links, _ = ui
    pipeline_runs = _pipeline_runs(ui_project)
    assert len(pipeline_runs) >= 2 and "lr13" in pipeline_runs
    page.goto(links["runs"])
    grid = page.get_by_role("grid")
    for name in _runs(ui_project):  # both pipeline runs, the sweep and its trials
        expect(grid.get_by_role("link", name=name, exact=True)).to_be_visible()
    # The training-runs view, not the GenAI overview a new browser opens by default.
    assert "/runs" in page.url and "/overview" not in page.url
    expect(page.get_by_text("Sort: test_accuracy")).to_be_visible()
    # The saved view's columns (ag-grid's col-id is the UI's column key).
    for column in ("metrics.`test_accuracy`", "metrics.`val_accuracy`"):
        expect(grid.locator(f'[role="columnheader"][col-id="{column}"]')).to_be_visible()
    for column in ("params.`train.optimizer`", "params.`train.learning_rate`"):
        expect(grid.locator(f'[role="columnheader"][col-id="{column}"]')).to_be_attached()
    cells = grid.locator('[role="gridcell"][col-id="metrics.`test_accuracy`"]')
    for r in pipeline_runs.values():
        value = repr(r.data.metrics["test_accuracy"])  # as the UI (JavaScript) prints it
        expect(cells.get_by_text(value, exact=True)).to_be_visible()
    page.screenshot(path="/tmp/ui-runs.png")
    if os.environ.get("DOCS_SCREENSHOTS"):  # the README's picture of this view, refreshed
        _docs_picture(Path("/tmp/ui-runs.png"), ROOT / "docs/img/mlflow-runs.png")


def _docs_picture(shot: Path, dest: Path, width: int = 960) -> None:
    """A screenshot, shrunk to ``width`` pixels and to a 64-colour palette: small enough to
    commit (tens of KB), sharp enough to read."""
    from PIL import Image

    with Image.open(shot) as im:
        im = im.convert("RGB")
        im = im.resize((width, round(im.height * width / im.width)), Image.LANCZOS)
        dest.parent.mkdir(parents=True, exist_ok=True)
        im.quantize(64).save(dest, optimize=True)


def test_the_readme_picture_of_the_runs_view_is_small_and_committed():
    """README shows the runs view that the test above saw (DOCS_SCREENSHOTS=1 refreshes it)."""
    from PIL import Image

    picture = ROOT / "docs/img/mlflow-runs.png"
    assert picture.stat().st_size < 150_000
    with Image.open(picture) as im:
        assert im.format == "PNG" and im.width <= 1000


def test_compare_view_shows_the_last_runs(ui, ui_project, page):
    from playwright.sync_api import expect

    links, _ = ui
    page.goto(links["compare"])
    pipeline_runs = _pipeline_runs(ui_project)
    expect(page.get_by_text(f"Comparing {len(pipeline_runs)} Runs")).to_be_visible()
    for name in pipeline_runs:
        expect(page.get_by_text(name, exact=True).first).to_be_visible()
    expect(page.get_by_text("best_val_accuracy", exact=True).first).to_be_visible()
    page.screenshot(path="/tmp/ui-compare.png", full_page=True)


def test_model_page_shows_the_champion(ui, ui_project, page):
    from playwright.sync_api import expect

    links, _ = ui
    page.goto(links["model"])
    expect(page.get_by_role("heading", name="lenet5-mnist")).to_be_visible()
    expect(page.get_by_text("@ champion").first).to_be_visible()
    page.screenshot(path="/tmp/ui-model.png")


def test_run_charts_are_grouped_by_metric_prefix(ui, page):
    from playwright.sync_api import expect

    links, _ = ui
    page.goto(links["charts"])
    for section in ("curves", "per_class", "robust", "Model metrics"):
        expect(page.get_by_text(section, exact=True).first).to_be_visible()
    page.screenshot(path="/tmp/ui-charts.png")


def test_ctrl_c_stops_the_server_cleanly(ui):
    links, proc = ui
    import urllib.request

    health = links["runs"].split("/#/")[0] + "/health"
    with urllib.request.urlopen(health, timeout=10) as resp:
        assert resp.status == 200
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130, _stderr(proc)
    with pytest.raises(OSError):
        urllib.request.urlopen(health, timeout=5)
