"""Team server (`python -m pipeline.tracking_server`): PostgreSQL, proxied artifacts, accounts.

One server per module (real PostgreSQL, real `mlflow server --app-name basic-auth` on
127.0.0.1), shared by the tests; accounts: admin, alice and bob (EDIT), rita (READ).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline import tracking_server as team
from pipeline.core.data import file_md5
from pipeline.core.tracking import PREDICTIONS_ARTIFACT
from pipeline.testing import postgres as pg
from pipeline.testing.project import (
    ROOT,
    TRACKED_STAGES,
    Server,
    clone_of,
    free_port,
    run,
    set_params,
    stage_env,
    start_training,
)

PASSWORDS = {
    "admin": "admin-Secret-4821",
    "alice": "alice-Secret-7730",
    "bob": "bob-Secret-1964",
    "rita": "rita-Secret-5512",
}
PERMISSIONS = {"alice": "edit", "bob": "edit", "rita": "read"}


def error_lines(stderr: str) -> list[str]:
    """The pipeline's own ERROR lines (``12:34:56 ERROR …``), not TensorFlow's."""
    return [line for line in stderr.splitlines() if re.match(r"\d\d:\d\d:\d\d ERROR ", line)]


def no_secret_in(text: str) -> None:
    for user, password in PASSWORDS.items():
        assert password not in text, f"{user}'s password leaked"
    assert pg.PASSWORD not in text, "the database password leaked"


# --- cheap checks of the start-up logic -------------------------------------------------


def test_auth_config_is_private_and_escapes_percent(tmp_path):
    text = team.auth_config("postgresql+psycopg2://u:p%40ss@h/db", "admin", "NO_PERMISSIONS")
    assert "p%%40ss" in text and "admin_password" not in text
    assert "auth_cache_ttl_seconds = 60" in text  # one PBKDF2 check per minute, not per request
    team.write_private(tmp_path / "a.ini", text)
    assert stat.S_IMODE((tmp_path / "a.ini").stat().st_mode) == 0o600


def server_env(**env: str) -> dict[str, str]:
    """stage_env, with this checkout's ``pipeline`` importable from any directory."""
    return stage_env(PYTHONPATH=str(ROOT), **env)


def server_cmd(port: int) -> list[str]:
    return [sys.executable, "-m", "pipeline.tracking_server", "--host", "127.0.0.1", "--port",
            str(port), "--workers", "2"]  # fmt: skip


@pytest.mark.parametrize(
    "env, message",
    [
        ({}, "MLFLOW_BACKEND_STORE_URI is not set"),
        ({"MLFLOW_BACKEND_STORE_URI": "postgresql://u:pw@127.0.0.1:1/x"},
         "MLFLOW_ARTIFACTS_DESTINATION is not set"),
        ({"MLFLOW_BACKEND_STORE_URI": "postgresql://u:pw@127.0.0.1:1/x",
          "MLFLOW_ARTIFACTS_DESTINATION": "/tmp/a"}, "no admin password"),
        ({"MLFLOW_BACKEND_STORE_URI": "postgresql://u:pw@127.0.0.1:1/x",
          "MLFLOW_ARTIFACTS_DESTINATION": "/tmp/a",
          "MLFLOW_AUTH_ADMIN_PASSWORD_FILE": "/nonexistent/pw"}, "cannot read it"),
        ({"MLFLOW_BACKEND_STORE_URI": "postgresql://u:pw@127.0.0.1:1/x",
          "MLFLOW_ARTIFACTS_DESTINATION": "/tmp/a", "MLFLOW_AUTH_ADMIN_PASSWORD": "x",
          "MLFLOW_AUTH_CACHE_TTL_S": "soon"}, "expected seconds"),
    ],
)  # fmt: skip
def test_server_refuses_an_incomplete_configuration(tmp_path, env, message):
    proc = run(server_cmd(free_port()), tmp_path, server_env(**env), check=False, timeout=60)
    assert proc.returncode == 1
    assert len(error_lines(proc.stderr)) == 1 and message in proc.stderr, proc.stderr
    no_secret_in(proc.stderr)


@pytest.mark.slow
def test_server_exits_with_one_line_when_postgresql_is_down(postgres, tmp_path):
    url = postgres.url("mlflow").replace(str(postgres.port), str(free_port()))
    env = server_env(
        MLFLOW_BACKEND_STORE_URI=url,
        MLFLOW_ARTIFACTS_DESTINATION=str(tmp_path / "artifacts"),
        MLFLOW_AUTH_ADMIN_PASSWORD=PASSWORDS["admin"],
    )
    proc = run(server_cmd(free_port()), tmp_path, env, check=False, timeout=60)
    assert proc.returncode == 1
    errors = error_lines(proc.stderr)
    assert len(errors) == 1 and "is unreachable" in errors[0], proc.stderr
    assert "postgresql+psycopg2://***@127.0.0.1:" in errors[0]
    no_secret_in(proc.stderr)
    assert not (tmp_path / "artifacts").exists()


# --- one authenticated server for the rest -----------------------------------------------


@pytest.fixture(scope="module")
def team_server(postgres, tmp_path_factory, smoke_project):
    """`python -m pipeline.tracking_server` on PostgreSQL with the four accounts."""
    work = tmp_path_factory.mktemp("team-server")
    (work / "admin-password").write_text(PASSWORDS["admin"] + "\n")
    (work / "admin-password").chmod(0o600)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    env = server_env(
        MLFLOW_BACKEND_STORE_URI=postgres.create_database("team"),
        MLFLOW_ARTIFACTS_DESTINATION=str(work / "artifacts"),
        MLFLOW_AUTH_ADMIN_PASSWORD_FILE=str(work / "admin-password"),
    )
    srv = Server(server_cmd(port), work, env, f"{uri}/health")
    with srv:
        # alice through the documented command; the others as MLflow's client does it
        # (the same calls, without starting Python twice more).
        (work / "alice").write_text(PASSWORDS["alice"] + "\n")
        cmd = [sys.executable, "-m", "pipeline.tracking_server", "users", "add", "alice",
               "--permission", "edit", "--password-file", str(work / "alice")]  # fmt: skip
        run(cmd, smoke_project, client_env(uri, "admin"), timeout=120)
        with signed_in("admin"):
            import mlflow
            from mlflow.server import get_app_client

            exp = mlflow.MlflowClient(uri).get_experiment_by_name("lenet5-mnist").experiment_id
            accounts = get_app_client("basic-auth", tracking_uri=uri)
            for user in ("bob", "rita"):
                accounts.create_user(user, PASSWORDS[user])
                for kind, resource in (("experiment", exp), ("registered_model", "lenet5-mnist")):
                    accounts.grant_user_permission(user, kind, resource, PERMISSIONS[user].upper())
        srv.uri, srv.work = uri, work
        yield srv


@contextlib.contextmanager
def signed_in(user: str):
    """MLflow clients in this process sign in as ``user`` (the environment is restored)."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    os.environ["MLFLOW_TRACKING_USERNAME"] = user
    os.environ["MLFLOW_TRACKING_PASSWORD"] = PASSWORDS[user]
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def client_env(uri: str, user: str, password: str | None = None, **extra: str) -> dict:
    return stage_env(
        MLFLOW_TRACKING_URI=uri,
        MLFLOW_TRACKING_USERNAME=user,
        MLFLOW_TRACKING_PASSWORD=password or PASSWORDS[user],
        **extra,
    )


@pytest.fixture
def as_admin(team_server, monkeypatch):
    """An MlflowClient signed in as the admin (environment restored afterwards)."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORDS["admin"])
    import mlflow

    return mlflow.MlflowClient(tracking_uri=team_server.uri)


@pytest.fixture(scope="module")
def trained(team_server, smoke_project, tmp_path_factory):
    """`dvc repro --force` of the stages that track, in a copy of the smoke project, as
    alice, her password in the tracking URI as some teams write it (MLflow's client signs
    in with it), then `pipeline.lineage --json`: the project and what both printed."""
    project = clone_of(smoke_project, tmp_path_factory.mktemp("alice") / "project")
    host = team_server.uri.split("://", 1)[1]
    env = stage_env(MLFLOW_TRACKING_URI=f"http://alice:{PASSWORDS['alice']}@{host}")
    proc = run(["dvc", "repro", "--force", "--single-item", *TRACKED_STAGES], project, env)
    lineage = run([sys.executable, "-m", "pipeline.lineage", "--json"], project, env)
    return SimpleNamespace(
        project=project,
        output=proc.stdout + proc.stderr + lineage.stdout + lineage.stderr,
        lineage=json.loads(lineage.stdout),
    )


def ranking_metric(project: Path) -> str:
    """The register stage's own ranking metric (``register.metric`` if params has one)."""
    register = yaml.safe_load((project / "params.yaml").read_text()).get("register", {})
    return register.get("metric", "test_accuracy")


@pytest.mark.slow
def test_whole_pipeline_predict_and_serve_against_the_authenticated_server(
    team_server, trained, as_admin, tmp_path
):
    project = trained.project
    client = as_admin
    run_id = json.loads((project / "data/train/run.json").read_text())["run_id"]
    r = client.get_run(run_id)
    assert r.info.status == "FINISHED" and "test_accuracy" in r.data.metrics
    assert r.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied by the server
    assert list((team_server.work / "artifacts").rglob("MLmodel"))
    assert [m.step for m in client.get_metric_history(run_id, "curves/val_accuracy")] == [1, 2]
    champion = client.get_model_version_by_alias("lenet5-mnist", "champion")
    assert champion.run_id == run_id
    assert trained.lineage["run_id"] == run_id
    # Nothing went to the project's own SQLite store: the server has the only copy.
    from mlflow import MlflowClient

    local = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    exp = local.get_experiment_by_name("lenet5-mnist")
    assert not local.search_runs([exp.experiment_id], f"attributes.run_id = '{run_id}'")

    # The read-only account predicts a PNG and serves the champion.
    with np.load(project / "data/prepared/test.npz", allow_pickle=False) as z:
        x, y = z["x"][:1], int(z["y"][0])
    Image.fromarray(255 - x[0]).resize((112, 112)).save(tmp_path / "digit.png")
    reader = client_env(team_server.uri, "rita")
    proc = run([sys.executable, "-m", "pipeline.predict", str(tmp_path / "digit.png")],
               project, reader, timeout=300)  # fmt: skip
    assert proc.stdout.startswith(f"{tmp_path / 'digit.png'}: digit ")
    no_secret_in(proc.stdout + proc.stderr)

    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m",
           "models:/lenet5-mnist@champion", "--host", "127.0.0.1", "--port", str(port),
           "--env-manager", "local", "--workers", "1"]  # fmt: skip
    import urllib.request

    with Server(cmd, tmp_path, reader, f"http://127.0.0.1:{port}/ping"):
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": x.tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as resp:
            probs = np.asarray(json.loads(resp.read())["predictions"])
    assert probs.shape == (1, 10) and abs(probs.sum() - 1) < 1e-4
    assert int(probs.argmax()) == y or probs.max() < 0.9  # a 2-epoch model may miss one


@pytest.mark.slow
def test_credentials_in_the_tracking_uri_never_reach_logs_params_or_tags(trained, as_admin):
    project = trained.project
    run_id = json.loads((project / "data/train/run.json").read_text())["run_id"]
    r = as_admin.get_run(run_id)
    champion = as_admin.get_model_version_by_alias("lenet5-mnist", "champion")
    no_secret_in(trained.output)  # the stages' and lineage's output
    no_secret_in(json.dumps([r.data.params, r.data.tags, champion.tags]))
    written = [project / "dvc.lock", *(project / "data").rglob("*"), *(project / ".dvc").rglob("*")]
    for path in written:
        if path.is_file() and path.stat().st_size < 5_000_000:
            no_secret_in(path.read_bytes().decode("latin-1"))


@pytest.mark.slow
def test_read_only_user_reads_but_cannot_register_or_move_the_alias(
    team_server, trained, as_admin, monkeypatch
):
    from mlflow.entities import Metric

    project = trained.project
    client = as_admin
    reader = client_env(team_server.uri, "rita")
    listed = run([sys.executable, "-m", "pipeline.compare", "--format", "csv"], project, reader)
    champion = client.get_model_version_by_alias("lenet5-mnist", "champion")
    assert champion.run_id in listed.stdout

    # A better finished run without a version: register would have to create one.
    exp = client.get_experiment_by_name("lenet5-mnist").experiment_id
    source = client.get_run(champion.run_id)
    better = client.create_run(exp, run_name="better-by-construction")
    metrics = [
        Metric(k, v + 0.0001 if "accuracy" in k else v, 0, 0)
        for k, v in source.data.metrics.items()
    ]
    client.log_batch(better.info.run_id, metrics=metrics)
    client.set_tag(better.info.run_id, "model.uri", source.data.tags["model.uri"])
    # Finished an hour ago: not another copy's fresh run that its own stage will register.
    hour_ago = int(time.time() * 1000) - 3_600_000
    client.set_terminated(better.info.run_id, "FINISHED", end_time=hour_ago)
    try:
        proc = run([sys.executable, "-m", "pipeline.register"], project, reader, check=False)
        assert proc.returncode == 1, proc.stderr
        errors = error_lines(proc.stderr)
        assert len(errors) == 1 and "permission denied (HTTP 403): user rita" in errors[0], (
            proc.stderr
        )
        assert "Traceback" not in proc.stderr
        assert not client.search_model_versions(f"run_id = '{better.info.run_id}'")

        # Moving the alias: the same one-line refusal (tracking.set_alias, as register does).
        from pipeline.core import tracking
        from pipeline.core.errors import TrackingError

        monkeypatch.setenv("MLFLOW_TRACKING_URI", team_server.uri)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "rita")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORDS["rita"])
        tracking.use_store()
        with pytest.raises(TrackingError, match=r"permission denied \(HTTP 403\): user rita"):
            tracking.set_alias("lenet5-mnist", "champion", champion.version)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORDS["admin"])
        assert client.get_model_version_by_alias("lenet5-mnist", "champion").version == (
            champion.version
        )
    finally:
        client.delete_run(better.info.run_id)  # out of every later ranking


@pytest.mark.slow
def test_read_only_user_cannot_train(team_server, trained):
    project = trained.project
    proc = run([sys.executable, "-m", "pipeline.train"], project,
               client_env(team_server.uri, "rita"), check=False)  # fmt: skip
    assert proc.returncode == 1
    errors = error_lines(proc.stderr)
    assert len(errors) == 1 and "permission denied (HTTP 403): user rita" in errors[0]
    assert "epoch 1/" not in proc.stderr and "training on" not in proc.stderr


@pytest.mark.slow
def test_wrong_password_is_one_line_and_never_echoed(team_server, trained):
    project = trained.project
    for user, password in (("alice", "not-her-password"), ("nobody", "x")):
        env = client_env(team_server.uri, user, password)
        proc = run([sys.executable, "-m", "pipeline.register"], project, env, check=False)
        assert proc.returncode == 1
        errors = error_lines(proc.stderr)
        assert len(errors) == 1, proc.stderr
        assert f"refused the credentials for user {user} (HTTP 401)" in errors[0]
        assert password not in proc.stderr
    env = stage_env(MLFLOW_TRACKING_URI=team_server.uri)  # no account at all
    proc = run([sys.executable, "-m", "pipeline.compare"], project, env, check=False)
    assert proc.returncode == 1 and "requires an account" in proc.stderr


@pytest.mark.slow
def test_two_machines_running_experiments_at_once_lose_nothing(
    team_server, trained, as_admin, tmp_path
):
    """alice and bob, each in their own working copy, `dvc exp run` at the same moment."""
    project = trained.project
    client = as_admin
    procs = {}
    for user, lr in (("alice", 0.05), ("bob", 0.02)):
        copy = clone_of(project, tmp_path / user)
        cmd = ["dvc", "exp", "run", "-n", f"{user}-lr", "-S", f"train.learning_rate={lr}"]
        procs[user] = subprocess.Popen(
            cmd, cwd=copy, env=client_env(team_server.uri, user), text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
    outputs = {user: p.communicate(timeout=600)[0] for user, p in procs.items()}
    for user, p in procs.items():
        assert p.returncode == 0, outputs[user][-4000:]
        no_secret_in(outputs[user])

    exp = client.get_experiment_by_name("lenet5-mnist").experiment_id
    runs = {user: client.search_runs([exp], f"tags.`dvc.exp_name` = '{user}-lr'") for user in procs}
    metric = ranking_metric(project)
    for user, found in runs.items():
        assert len(found) == 1, user
        r = found[0]
        assert r.info.status == "FINISHED"
        assert {"test_accuracy", "test_loss", "val_accuracy", metric} <= set(r.data.metrics)
        assert len(client.get_metric_history(r.info.run_id, "curves/val_accuracy")) == 2
    versions = client.search_model_versions("name = 'lenet5-mnist'")
    candidates = [v for v in versions if "duplicate_of" not in v.tags]  # the others: ignored
    assert len({v.run_id for v in candidates}) == len(candidates), "two candidates of one run"
    finished = [
        r for r in client.search_runs([exp], "attributes.status = 'FINISHED'")
        if "model.uri" in r.data.tags and metric in r.data.metrics
    ]  # fmt: skip
    # The best run is the champion, or the challenger if it was not significantly better.
    best = max(finished, key=lambda r: r.data.metrics[metric])
    holders = {}
    for alias in ("champion", "challenger"):
        with contextlib.suppress(Exception):
            holders[alias] = client.get_model_version_by_alias("lenet5-mnist", alias).run_id
    assert best.info.run_id in holders.values(), holders


@pytest.mark.slow
def test_postgresql_going_down_mid_run_fails_the_stage_and_registers_nothing(
    team_server, trained, postgres, as_admin, tmp_path
):
    project = clone_of(trained.project, tmp_path / "project")
    client = as_admin
    before = {v.version for v in client.search_model_versions("name = 'lenet5-mnist'")}
    (project / "data/train/model.keras").unlink()
    set_params(project, train__epochs=500)
    proc, _ = start_training(project, client_env(team_server.uri, "alice"), until="epoch 2/")
    postgres.stop()
    try:
        _, rest = proc.communicate(timeout=300)
    finally:
        postgres.start()
    assert proc.returncode == 1, rest
    errors = error_lines(rest)
    assert len(errors) == 1 and "127.0.0.1" in errors[0], rest
    assert "Traceback" not in rest
    no_secret_in(rest)
    assert not (project / "data/train/model.keras").exists()
    run_id = next(
        r.info.run_id
        for r in client.search_runs(
            [client.get_experiment_by_name("lenet5-mnist").experiment_id],
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
    )
    assert client.get_run(run_id).info.status != "FINISHED"
    assert {v.version for v in client.search_model_versions("name = 'lenet5-mnist'")} == before


RACE_WORKER = """
import os, pathlib, sys, time
from pipeline import register
from pipeline.core.cli import setup_logging
setup_logging()
base, me, rounds = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
os.chdir(base / me)
for r in range(rounds):
    deadline = time.monotonic() + 300
    while not (base / f"go-{r}").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        register.main()
        status = "ok"
    except BaseException as e:
        status = f"error {e!r}"
    (base / f"writing-{r}-{me}").write_text(status)
    (base / f"writing-{r}-{me}").rename(base / f"done-{r}-{me}")  # seen whole or not at all
"""


def _model_dir(model, path: Path) -> Path:
    """A Keras model saved as an MLflow model folder (what a run's ``model`` artifact is)."""
    import mlflow

    # Named requirements: inferring them runs a subprocess that imports TensorFlow (~6 CPU-s
    # a model); this test never installs them.
    mlflow.keras.save_model(model, str(path), pip_requirements=["keras", "tensorflow"])
    return path


@pytest.mark.slow
def test_two_machines_registering_at_once_lose_nothing_and_duplicate_nothing(
    team_server, trained, as_admin, tmp_path
):
    """alice and bob run `register` at the same moment, 6 rounds, on the team server
    with EDIT permission only: each round a new best run (and a worse one) must end as
    the one candidate version of its run and the champion, the worse run unregistered."""
    import keras
    from mlflow.server import get_app_client

    project = trained.project
    client = as_admin
    name, experiment = "race-model", "race"
    exp = client.create_experiment(experiment)
    accounts = get_app_client("basic-auth", tracking_uri=team_server.uri)
    for user in ("alice", "bob"):
        accounts.grant_user_permission(user, "experiment", exp, "EDIT")
        accounts.grant_user_permission(user, "registered_model", name, "EDIT")

    strong = keras.saving.load_model(project / "data/train/model.keras")
    weak = keras.models.clone_model(strong)  # same network, untrained weights
    dirs = {"strong": _model_dir(strong, tmp_path / "strong"),
            "weak": _model_dir(weak, tmp_path / "weak")}  # fmt: skip

    with np.load(project / "data/prepared/test.npz", allow_pickle=False) as z:
        x, y = z["x"][:2000], z["y"][:2000]  # the gate's images: a slice is enough here
    np.savez(tmp_path / "test.npz", x=x, y=y)
    digest = file_md5(tmp_path / "test.npz")
    # Each run logs its test predictions as evaluate does, so the gate reads them (the
    # common case) instead of loading two models a round: 4 s a round of the race test.
    predictions = {
        m: "actual,predicted\n" + "".join(f"{a},{b}\n" for a, b in zip(y, pred, strict=True))
        for m, pred in {
            "strong": strong.predict(x, verbose=0).argmax(axis=1),
            "weak": weak.predict(x, verbose=0).argmax(axis=1),
        }.items()
    }

    def finished_run(model: str, val_accuracy: float) -> str:
        r = client.create_run(exp)
        run_id = r.info.run_id
        client.log_artifacts(run_id, str(dirs[model]), "model")
        client.log_text(run_id, predictions[model], PREDICTIONS_ARTIFACT)
        client.set_tag(run_id, "data.test.md5", digest)
        for key, value in {"val_accuracy": val_accuracy, "val_loss": 1 - val_accuracy,
                           "test_accuracy": val_accuracy, "test_loss": 1.0}.items():  # fmt: skip
            client.log_metric(run_id, key, value)
        client.set_tag(run_id, "model.uri", f"runs:/{run_id}/model")
        client.set_terminated(run_id, "FINISHED")
        return run_id

    # The champion every round starts from: a weak model, registered once.
    weak_run = finished_run("weak", 0.10)
    client.create_registered_model(name)
    weak_version = client.create_model_version(name, f"runs:/{weak_run}/model", weak_run)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["tracking"]["experiment"], params["register"]["model_name"] = experiment, name
    for user in ("alice", "bob"):
        (tmp_path / user / "data/prepared").mkdir(parents=True)
        shutil.copy(tmp_path / "test.npz", tmp_path / user / "data/prepared/test.npz")
        (tmp_path / user / "params.yaml").write_text(yaml.safe_dump(params))

    rounds = 6  # 20 before: the race is there every round (below)
    raced = 0  # rounds in which both registered the run (a duplicate version to tag)
    workers = {
        user: subprocess.Popen(
            [sys.executable, "-c", RACE_WORKER, str(tmp_path), user, str(rounds)],
            env=client_env(team_server.uri, user), stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / f"{user}.log", "w"),  # noqa: SIM115
        )
        for user in ("alice", "bob")
    }  # fmt: skip
    try:
        for r in range(rounds):
            client.set_registered_model_alias(name, "champion", weak_version.version)
            best = finished_run("strong", 0.50 + r / 100)  # better than every earlier run
            worse = finished_run("strong", 0.40 + r / 100)
            (tmp_path / f"go-{r}").touch()
            for user in workers:
                done = tmp_path / f"done-{r}-{user}"
                deadline = time.monotonic() + 300
                while not done.exists() and time.monotonic() < deadline:
                    assert workers[user].poll() is None, (tmp_path / f"{user}.log").read_text()
                    time.sleep(0.05)
                assert done.read_text() == "ok", (r, user, done.read_text())
            versions = client.search_model_versions(f"name = '{name}' and run_id = '{best}'")
            kept = [v for v in versions if "duplicate_of" not in v.tags]
            assert len(kept) == 1, (r, [(v.version, v.tags) for v in versions])  # no duplicate
            raced += len(versions) > 1
            assert all(v.tags["duplicate_of"] == str(kept[0].version)
                       for v in versions if v.version != kept[0].version)  # fmt: skip
            champion = client.get_model_version_by_alias(name, "champion")
            assert str(champion.version) == str(kept[0].version), r  # the better run, not lost
            assert champion.tags["gate.decision"] == "promoted"
            assert not client.search_model_versions(f"name = '{name}' and run_id = '{worse}'")
    finally:
        for proc in workers.values():
            proc.kill()
            proc.wait()
    logs = (tmp_path / "alice.log").read_text() + (tmp_path / "bob.log").read_text()
    no_secret_in(logs)
    # Every gate read both runs' predictions as logged (no rescoring). A register that
    # finds the alias already on the best candidate (the other was quicker) runs no gate.
    # Both start within 10 ms of the go file and a round takes seconds: both registered
    # the run in 6 of 6 rounds on an idle machine. At least one must have, or nothing raced.
    assert raced >= 1, "no round had two versions of its run: the race was not exercised"
    gates = logs.count(" disagreements, p = ")
    assert rounds <= gates <= 2 * rounds, logs[-2000:]
    assert logs.count("as logged at evaluation") == 2 * gates, logs[-2000:]
