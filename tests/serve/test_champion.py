"""The service follows @champion under load: register moves the alias to a better run and
the answers change version within poll_s plus the load time, with no failed request and
no request answered by a version older than one already seen; a version that cannot be
loaded, or an alias that is gone, leaves the current one serving."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from pipeline.serve.champion import verify_webhook
from pipeline.testing.load import drive
from pipeline.testing.project import (
    NO_SHEDDING,
    clone_of,
    run,
    scoring_service,
    set_params,
    stage_env,
)
from tests.stores import mlflow_client

pytestmark = pytest.mark.slow

NAME = "lenet5-mnist"
POLL_S = 0.5


def one_image(project) -> bytes:
    with np.load(project / "data/prepared/test.npz", allow_pickle=False) as z:
        return json.dumps({"inputs": z["x"][:1].tolist()}).encode()


def served_version(url: str) -> str:
    """The version the service answers with now (its metadata: no request, no log row)."""
    with urllib.request.urlopen(f"{url}/v2/models/{NAME}", timeout=30) as resp:
        return json.loads(resp.read())["versions"][0]


def rows_by_version(project) -> dict[str, int]:
    with sqlite3.connect(project / "predictions.db") as db:
        found = db.execute("SELECT model_version, count(*) FROM predictions GROUP BY 1")
        return dict(found.fetchall())


def test_register_moves_the_alias_under_load_and_no_request_fails(challenger_project, tmp_path):
    """The session's challenger (a clearly better run, kept by an absurd register.alpha)
    is promoted by `dvc repro` with the default alpha while the service answers a steady
    load: only register reruns, and the swap costs no request."""
    project = clone_of(challenger_project, tmp_path)
    set_params(project, serve__poll_s=POLL_S, register__alpha=0.05, **NO_SHEDDING)
    client = mlflow_client(project)
    first = client.get_model_version_by_alias(NAME, "champion").version
    body = one_image(project)
    server = scoring_service(project)
    with server as proc:
        stop, moved = threading.Event(), {}
        output = tmp_path / "repro.log"
        repro = subprocess.Popen(
            ["dvc", "repro"], cwd=project, env=stage_env(), stdout=output.open("w"),
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        start = time.perf_counter()

        def watch() -> None:  # when the alias moved, seen from outside
            while not stop.is_set():
                now = client.get_model_version_by_alias(NAME, "champion").version
                if now != first:
                    moved[now] = time.perf_counter() - start
                    return
                time.sleep(0.1)

        result = {}
        loader = threading.Thread(target=lambda: result.setdefault("load", drive(
            f"{server.url}/invocations", lambda i: body, concurrency=4, seconds=300,
            stop=stop, pause_s=0.02)))  # fmt: skip
        watcher = threading.Thread(target=watch)
        loader.start()
        watcher.start()
        assert repro.wait(timeout=600) == 0, output.read_text()[-4000:]
        assert "Running stage 'register'" in output.read_text()
        assert "Running stage 'train'" not in output.read_text()  # no training under load
        watcher.join(timeout=30)
        # The poll, downloading and warming the new version, then a while on it.
        deadline = time.monotonic() + 60
        while served_version(server.url) != str(next(iter(moved), first)):
            assert time.monotonic() < deadline, "the service never served the new champion"
            time.sleep(0.2)
        time.sleep(1)
        stop.set()
        loader.join(timeout=60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0  # drained, log flushed, exit 0
    load = result["load"]
    [(second, moved_at)] = moved.items()
    assert load.errors == 0 and len(load.answers) > 100
    versions = [a.version for a in load.answers]
    assert set(versions) == {str(first), str(second)}
    new = [a for a in load.answers if a.version == str(second)]
    old = [a for a in load.answers if a.version == str(first)]
    switch = min(a.sent_at for a in new)
    # requests sent after the first answer from the new version are all answered by it
    assert max(a.sent_at for a in old) < min(a.sent_at + a.latency_s for a in new)
    # The poll, then downloading and warming it: 2-4 s on an idle machine, more under load
    assert switch - moved_at < POLL_S + 15
    assert rows_by_version(project) == {str(first): len(old), str(second): len(new)}


def _wait_logged(server, text: str, timeout_s: float = 60) -> None:
    """Until the service's log has ``text`` (read through a file of its own: seeking the
    server's handle would move the offset the service writes at)."""
    deadline = time.monotonic() + timeout_s
    while text not in Path(server.log.name).read_text():
        assert time.monotonic() < deadline, f"the service never logged {text!r}"
        time.sleep(0.1)


def test_a_version_that_cannot_be_loaded_or_a_lost_alias_keeps_the_current_one(
    smoke_project, tmp_path
):
    project = clone_of(smoke_project, tmp_path)
    set_params(project, serve__poll_s=POLL_S)
    client = mlflow_client(project)
    good = client.get_model_version_by_alias(NAME, "champion")
    body = one_image(project)
    server = scoring_service(project, stage_env())
    with server as proc:
        broken = client.create_model_version(NAME, str(tmp_path / "gone"), run_id=good.run_id)
        client.set_registered_model_alias(NAME, "champion", broken.version)
        _wait_logged(server, f"cannot load v{broken.version}")
        load = drive(f"{server.url}/invocations", lambda i: body, concurrency=2, requests=20)
        assert load.errors == 0 and {a.version for a in load.answers} == {str(good.version)}
        client.delete_registered_model_alias(NAME, "champion")
        _wait_logged(server, "not found in the registry")
        load = drive(f"{server.url}/invocations", lambda i: body, concurrency=2, requests=20)
        assert load.errors == 0 and {a.version for a in load.answers} == {str(good.version)}
        with urllib.request.urlopen(f"{server.url}/metrics") as resp:
            text = resp.read().decode()
        failures = [ln for ln in text.splitlines()
                    if ln.startswith('serve_model_reloads_total{result="failure"}')]  # fmt: skip
        assert failures and float(failures[0].split()[-1]) >= 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        server.log.seek(0)
        logged = server.log.read()
    warnings = [ln for ln in logged.splitlines() if " WARNING " in ln]
    loads = [ln for ln in warnings if f"cannot load v{broken.version}" in ln]
    assert len(loads) == 1 and "still serving" in loads[0], warnings  # once, not every poll
    assert any("not found in the registry" in ln for ln in warnings), warnings


def test_no_champion_is_one_line_and_exit_1(smoke_project, tmp_path):
    project = clone_of(smoke_project, tmp_path)
    mlflow_client(project).delete_registered_model_alias(NAME, "champion")
    import sys

    proc = run([sys.executable, "-m", "pipeline.serve", "--port", "0"], project, check=False)
    assert proc.returncode == 1
    errors = [ln for ln in proc.stderr.splitlines() if " ERROR " in ln]
    assert len(errors) == 1 and f"no {NAME}@champion" in errors[0]


def test_an_mlflow_webhook_from_the_team_server_swaps_at_once(smoke_project, tmp_path):
    """Against a real `mlflow server` (SQL store, webhooks): the service polls once an
    hour, yet moving @champion swaps it within seconds, through MLflow's own signed
    `model_version_alias.created` delivery to /webhooks/mlflow."""
    import mlflow

    from pipeline.testing.project import tracking_server

    project = clone_of(smoke_project, tmp_path / "project")
    set_params(project, serve__poll_s=3600)
    server = tracking_server(tmp_path)
    # webhooks to http on 127.0.0.1: MLflow allows them only when told to (tests only)
    # (and a 1 s cache of the webhook list, which the first alias move filled, empty)
    server.env = {
        **server.env,
        "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
        "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
        "MLFLOW_WEBHOOK_CACHE_TTL": "1",
    }
    # The smoke champion's files, logged on the server as a run's model and registered
    # twice: what matters here is that the alias moves (the pipeline against a server is
    # test_tracking_server's; a repro here cost a whole training).
    local = mlflow_client(project)
    smoke = local.get_model_version_by_alias(NAME, "champion")
    files = mlflow.artifacts.download_artifacts(
        artifact_uri=local.get_model_version_download_uri(NAME, smoke.version),
        dst_path=str(tmp_path / "model"),
    )
    with server:
        env = stage_env(MLFLOW_TRACKING_URI=server.uri, SERVE_WEBHOOK_SECRET="s3cret")
        client = mlflow.MlflowClient(tracking_uri=server.uri)
        run_id = client.create_run(client.create_experiment("webhook")).info.run_id
        client.log_artifacts(run_id, files, "model")
        client.set_terminated(run_id, "FINISHED")
        client.create_registered_model(NAME)
        first = client.create_model_version(NAME, f"runs:/{run_id}/model", run_id)
        second = client.create_model_version(NAME, f"runs:/{run_id}/model", run_id)
        client.set_registered_model_alias(NAME, "champion", first.version)
        service = scoring_service(project, env)
        with service as proc:
            client.create_webhook(
                name="serve", url=f"{service.url}/webhooks/mlflow",
                events=["model_version_alias.created"], secret="s3cret",
            )  # fmt: skip
            time.sleep(1.5)  # the server's cached (empty) list of webhooks expires
            start = time.monotonic()
            client.set_registered_model_alias(NAME, "champion", second.version)
            seen = None
            while time.monotonic() - start < 60:
                seen = served_version(service.url)
                if seen == str(second.version):
                    break
                time.sleep(0.2)
            waited = time.monotonic() - start
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
            service.log.seek(0)
            served = service.log.read()
    # serve.poll_s is an hour: only the webhook can have swapped it (in 1-3 s when idle)
    assert seen == str(second.version) and waited < 45, (seen, waited, served[-2000:])
    assert f"now serving v{second.version}" in served


def test_verify_webhook_rules():
    headers = {"x-mlflow-signature": "v1,AAAA", "x-mlflow-delivery-id": "d",
               "x-mlflow-timestamp": "100"}  # fmt: skip
    assert "secret" in verify_webhook(headers, b"{}", "")
    assert "old" in verify_webhook(headers, b"{}", "s", now=100 + 301)
    assert verify_webhook(headers, b"{}", "s", now=100) == "bad signature"
    assert "malformed" in verify_webhook({}, b"{}", "s")
