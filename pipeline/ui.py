"""Open the MLflow UI on this project's runs: ``python -m pipeline.ui`` (``make ui``).

With the local store (no ``MLFLOW_TRACKING_URI``) it starts ``mlflow server`` on
127.0.0.1 (a free port, or ``--port``) for ``mlflow.db`` and ``mlartifacts/``, waits until
it answers, prints the URLs below and serves until Ctrl-C. Against a team server
(``MLFLOW_TRACKING_URI=http(s)://...``) it starts nothing and prints the same URLs for it.

The URLs (one a line, ``label: url``) open in any browser, a fresh profile included:

- ``runs``: the experiment's training-runs view (not the GenAI overview), sorted by test
  accuracy, with test/val accuracy and the key params as columns: a view saved in the
  experiment the way the UI's Share button does (``viewStateShareKey``);
- ``compare``: the compare page of the last evaluated runs (``--last``, newest first);
- ``model``: the registered model with its aliases (``@champion``);
- ``charts``: the champion's (else the newest run's) metric charts, one section per
  metric prefix (``curves/``, ``per_class/``, ``robust/``, ...).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.core import tracking
from pipeline.core.cli import run
from pipeline.core.errors import PipelineError, TrackingError, redact
from pipeline.core.layout import MLFLOW_ARTIFACTS, project_root
from pipeline.core.params import Params, load_params
from pipeline.core.promotion import CANDIDATE_FILTER
from pipeline.core.receipt import foreign_outputs, workspace_run_id

log = logging.getLogger("pipeline.ui")

VIEW_KEY = "pipeline-ui-training-runs"  # the saved runs view (experiment tag suffix)
# The UI orders the columns itself (metrics, then params, each alphabetically): few enough
# that the params still fit on a laptop screen beside the run names.
METRIC_COLUMNS = ("test_accuracy", "val_accuracy")
PARAM_COLUMNS = ("train.optimizer", "train.learning_rate", "model.activation", "train.epochs")
ML = {"workflowType": "machine_learning"}  # else a new browser opens the GenAI side of the UI
START_TIMEOUT_S = 180  # a cold `mlflow server` on a busy 2-core machine takes ~20 s
STOP_TIMEOUT_S = 20


def runs_view_state() -> dict[str, object]:
    """What the runs table shows: the UI's own keys (``selectedColumns`` holds ids such as
    ``metrics.`test_accuracy```; see docs/pipeline.md, "Tracking: MLflow")."""
    return {
        "selectedColumns": [
            *(f"metrics.`{m}`" for m in METRIC_COLUMNS),
            *(f"params.`{p}`" for p in PARAM_COLUMNS),
        ],
        "orderByKey": "metrics.`test_accuracy`",
        "orderByAsc": False,
    }


@dataclass(frozen=True)
class Views:
    experiment_id: str
    run_ids: tuple[str, ...]  # the last evaluated runs, newest first
    chart_run_id: str
    model_name: str
    shared: bool  # the runs view could be saved in the experiment


def urls(base: str, views: Views) -> dict[str, str]:
    """label -> URL on the UI at ``base`` (hash routes of MLflow 3.17's single-page app)."""
    exp = views.experiment_id
    runs_query = dict(ML)
    if views.shared:
        runs_query["viewStateShareKey"] = VIEW_KEY
    else:  # no saved view (read-only account): at least the sort order
        runs_query.update(orderByKey="metrics.`test_accuracy`", orderByAsc="false")
    compare = {
        "runs": json.dumps(list(views.run_ids), separators=(",", ":")),
        "experiments": json.dumps([exp], separators=(",", ":")),
        **ML,
    }
    model = urllib.parse.quote(views.model_name, safe="")
    charts = f"experiments/{exp}/runs/{views.chart_run_id}/model-metrics"
    return {
        "runs": f"{base}/#/experiments/{exp}/runs?{_query(runs_query)}",
        "compare": f"{base}/#/compare-runs?{_query(compare)}",
        "model": f"{base}/#/models/{model}?{_query(ML)}",
        "charts": f"{base}/#/{charts}?{_query(ML)}",
    }


def _query(values: dict[str, str]) -> str:
    return urllib.parse.urlencode(values, quote_via=urllib.parse.quote, safe="")


def find_views(params: Params, last: int) -> Views:
    """The experiment, its last evaluated runs and the champion, from the current store;
    the runs view saved in the experiment. One-line errors when there is nothing to show."""
    name = params.tracking.experiment
    uri = redact(tracking.tracking_uri())
    experiment_id = tracking.find_experiment(name)
    runs = tracking.search_runs(experiment_id, CANDIDATE_FILTER) if experiment_id else None
    if runs is None or runs.empty:
        where = f"experiment {name} in {uri}"
        foreign = foreign_outputs(tracking.store_facts(name, workspace_run_id()))
        raise PipelineError(f"no evaluated run in {where}: {foreign or '`make repro` makes one'}")
    run_ids = tuple(runs["run_id"].head(last))
    model = params.register.model_name
    champion = tracking.alias_target(model, params.register.alias)
    if champion is None:
        why = tracking.why_no_champion(model, params.register.alias, name)
        log.warning("the model page shows no champion: %s", why)
    try:
        tracking.share_view(experiment_id, VIEW_KEY, runs_view_state())
        shared = True
    except TrackingError as e:
        log.warning("%s; the runs URL sorts by test accuracy, pick columns by hand", e)
        shared = False
    return Views(
        experiment_id=experiment_id,
        run_ids=run_ids,
        chart_run_id=champion.run_id if champion else run_ids[0],
        model_name=model,
        shared=shared,
    )


def server_base(uri: str) -> str:
    """A team server's URL for a browser: no credentials (it asks), no trailing slash."""
    parts = urllib.parse.urlsplit(uri)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl().rstrip("/")


def check_port(port: int) -> None:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            raise PipelineError(f"port {port} on 127.0.0.1 is busy ({e.strerror})") from None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(uri: str, port: int) -> list[str]:
    root = project_root()
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        uri,
        "--default-artifact-root",
        (root / MLFLOW_ARTIFACTS).as_uri(),
        "--artifacts-destination",
        str(root / MLFLOW_ARTIFACTS),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]


def wait_until_up(proc: subprocess.Popen, port: int, server_log: Path) -> None:
    """Poll ``/health`` until it answers; a one-line error if the server exits first."""
    url = f"http://127.0.0.1:{port}/health"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PipelineError(
                f"mlflow server exited {proc.returncode} before answering: "
                f"{_last_line(server_log)} (log: {server_log})"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise PipelineError(f"mlflow server did not answer on {url} within {START_TIMEOUT_S}s")


def _last_line(path: Path) -> str:
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "(no output)"


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (gunicorn/uvicorn workers too), then SIGKILL."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass
    log.info("mlflow server stopped")


def print_urls(links: dict[str, str]) -> None:
    width = max(len(label) for label in links) + 1
    for label, url in links.items():
        sys.stdout.write(f"{label + ':':<{width}} {url}\n")
    sys.stdout.flush()


def serve(uri: str, port: int, views: Views) -> None:
    """Run ``mlflow server`` for the local store until it exits or Ctrl-C/SIGTERM."""
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with tempfile.NamedTemporaryFile("w+", prefix="mlflow-ui-", suffix=".log") as server_log:
        # Its own session: the terminal's Ctrl-C reaches only us, and we stop the group.
        proc = subprocess.Popen(
            server_command(uri, port),
            cwd=project_root(),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=server_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_until_up(proc, port, Path(server_log.name))
            print_urls(urls(f"http://127.0.0.1:{port}", views))
            log.info("MLflow UI on http://127.0.0.1:%d (Ctrl-C stops it)", port)
            code = proc.wait()
            raise PipelineError(f"mlflow server exited {code}: {_last_line(Path(server_log.name))}")
        finally:
            stop(proc)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.ui", description=__doc__)
    parser.add_argument("--port", type=int, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--last", type=int, default=5, help="runs on the compare page")
    args = parser.parse_args(argv)
    if args.last < 1:
        parser.error("--last must be at least 1")
    params = load_params()
    uri = tracking.use_store()
    if tracking.is_server(uri):
        print_urls(urls(server_base(uri), find_views(params, args.last)))
        return
    if args.port is not None:
        check_port(args.port)
    views = find_views(params, args.last)
    port = args.port if args.port is not None else free_port()
    check_port(port)  # the free port may have been taken meanwhile
    serve(uri, port, views)


if __name__ == "__main__":
    run(main)
