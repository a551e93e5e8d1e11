"""`pipeline.compare` and `pipeline.register` on a store holding 500 runs: SQLite vs PostgreSQL.

    python -m benchmarks.stores                 # ~3 min on 2 cores
    python -m benchmarks.stores --runs 500 --repeat 3

Fills each store with ``--runs`` finished runs (params and metrics as the pipeline logs
them, through ``MlflowClient.log_batch``), a few of which carry a real logged model (a tiny
pyfunc), then times the two commands as a user runs them (wall seconds of the whole
process, Python and MLflow start-up included; median of ``--repeat``):

- ``sqlite``: the default store, a SQLite file (``sqlite:///mlflow.db``);
- ``postgresql``: the same runs in PostgreSQL, as a direct SQLAlchemy store;
- ``team server``: that PostgreSQL database behind ``python -m pipeline.tracking_server``
  (HTTP, basic-auth account with EDIT), the team setup.

PostgreSQL is a throwaway server (pipeline/testing/postgres.py), or ``--postgres-url`` (an empty
database you own). ``register`` is timed twice: the first call registers the best run and
sets the alias, later calls find nothing to do.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "lenet5-mnist"
# The throwaway server's admin password: from the environment, else a fresh random one
# (nothing secret is committed; the server lives only for this benchmark).
PASSWORD = os.environ.get("BENCH_ADMIN_PASSWORD") or secrets.token_urlsafe(24)


def fill(uri: str, runs: int, artifacts: Path, with_model: int = 5) -> None:
    """``runs`` finished runs in experiment lenet5-mnist; ``with_model`` of them with a model."""
    import mlflow
    from mlflow.entities import Metric, Param, RunTag

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.create_experiment(EXPERIMENT, artifact_location=artifacts.as_uri())
    rng = random.Random(0)
    model_uri = None
    for i in range(runs):
        now = int(time.time() * 1000)
        run = client.create_run(exp, run_name=f"bench-{i:03d}", start_time=now - 3_660_000)
        acc = 0.95 + rng.random() * 0.04
        metrics = [Metric("test_accuracy", acc, now, 0), Metric("test_loss", 1 - acc, now, 0)]
        metrics += [Metric("best_val_accuracy", acc - 0.001, now, 0)]
        metrics += [Metric("val_accuracy", acc - 0.01 + e / 1000, now, e) for e in (1, 2, 3)]
        metrics += [Metric(f"precision_{d}", acc, now, 0) for d in range(10)]
        params = [
            Param("train.learning_rate", str(rng.choice([0.01, 0.005, 0.002]))),
            Param("train.optimizer", rng.choice(["sgd", "adam"])),
            Param("train.epochs", "30"),
            Param("model.activation", "tanh"),
        ]
        tags = [RunTag("dvc.exp_name", f"bench-{i:03d}")]
        client.log_batch(run.info.run_id, metrics=metrics, params=params, tags=tags)
        if i >= runs - with_model:  # the last few have a model; the very last is the best
            model_uri = model_uri or _tiny_model(client, run.info.run_id)
            best = [Metric("test_accuracy", 0.999 - (runs - 1 - i) / 1000, now, 0)]
            client.log_batch(run.info.run_id, metrics=best, tags=[RunTag("model.uri", model_uri)])
        # Finished a while ago, like a store in use (register leaves runs that finished
        # just now in another working copy to that copy's own register stage).
        client.set_terminated(run.info.run_id, "FINISHED", end_time=now - 3_600_000)


def _tiny_model(client, run_id: str) -> str:
    """A real logged model (a constant pyfunc): what register's version points at."""
    import mlflow

    class Constant(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input):
            return [0] * len(model_input)

    mlflow.set_tracking_uri(client._tracking_client.tracking_uri)
    with mlflow.start_run(run_id=run_id, nested=False):
        info = mlflow.pyfunc.log_model(name="model", python_model=Constant(), pip_requirements=[])
    return info.model_uri


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return elapsed


def measure(env: dict[str, str], repeat: int) -> dict[str, float]:
    """Median seconds of compare, the first register, and a repeated (no-op) register."""
    work = Path(tempfile.mkdtemp(prefix="bench-store-"))
    shutil.copy(ROOT / "params.yaml", work / "params.yaml")
    py = [sys.executable, "-m"]
    first = timed([*py, "pipeline.register"], work, env)
    return {
        "compare_s": statistics.median(
            timed([*py, "pipeline.compare", "--format", "csv"], work, env) for _ in range(repeat)
        ),
        "register_first_s": first,
        "register_again_s": statistics.median(
            timed([*py, "pipeline.register"], work, env) for _ in range(repeat)
        ),
    }


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def start_team_server(database: str, artifacts: Path) -> tuple[subprocess.Popen, str]:
    """`python -m pipeline.tracking_server` on ``database``; an EDIT account ``bench``."""
    port = _free_port()
    env = base_env(
        MLFLOW_BACKEND_STORE_URI=database,
        MLFLOW_ARTIFACTS_DESTINATION=str(artifacts),
        MLFLOW_AUTH_ADMIN_PASSWORD=PASSWORD,
    )
    cmd = [sys.executable, "-m", "pipeline.tracking_server", "--host", "127.0.0.1",
           "--port", str(port)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2).close()
            return proc, uri
        except OSError:
            if proc.poll() is not None:
                raise SystemExit("pipeline.tracking_server did not start") from None
            time.sleep(0.5)
    raise SystemExit("pipeline.tracking_server did not answer within 150 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--postgres-url", help="an empty PostgreSQL database (else throwaway)")
    args = parser.parse_args()

    from pipeline.core.urls import with_driver

    results: dict[str, dict[str, float]] = {}
    pg = None
    tmp = Path(tempfile.mkdtemp(prefix="bench-stores-"))
    try:
        sqlite = f"sqlite:///{tmp / 'mlflow.db'}"
        start = time.perf_counter()
        fill(sqlite, args.runs, tmp / "sqlite-artifacts")
        fill_sqlite_s = time.perf_counter() - start
        results["sqlite"] = measure(base_env(MLFLOW_TRACKING_URI=sqlite), args.repeat)

        url = args.postgres_url
        if not url:
            sys.path.insert(0, str(ROOT))
            from pipeline.testing.postgres import PostgresServer, bindir

            pg = PostgresServer(_free_port(), bindir()).init()
            pg.start()
            url = pg.create_database("bench")
        url = with_driver(url)
        start = time.perf_counter()
        fill(url, args.runs, tmp / "pg-artifacts")
        fill_pg_s = time.perf_counter() - start
        # Fresh registry state for each store: register's first call is the same work.
        results["postgresql"] = measure(base_env(MLFLOW_TRACKING_URI=url), args.repeat)

        server, uri = start_team_server(url, tmp / "artifacts")
        try:
            admin = base_env(
                MLFLOW_TRACKING_URI=uri,
                MLFLOW_TRACKING_USERNAME="admin",
                MLFLOW_TRACKING_PASSWORD=PASSWORD,
            )
            # The registry in PostgreSQL already has the version from the direct run: drop
            # it, so the server's first register does the same work as the others.
            (tmp / "pw").write_text(PASSWORD + "\n")
            subprocess.run(
                [sys.executable, "-m", "pipeline.tracking_server", "users", "add", "bench",
                 "--permission", "edit", "--password-file", str(tmp / "pw")],
                cwd=ROOT, env=admin, check=True, capture_output=True,
            )  # fmt: skip
            _delete_registered_model(uri)
            user = {**admin, "MLFLOW_TRACKING_USERNAME": "bench"}
            results["team server (PostgreSQL, HTTP, accounts)"] = measure(user, args.repeat)
        finally:
            import signal

            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
    finally:
        if pg is not None:
            pg.destroy()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"- cpu: {_cpu()}; cores: {os.cpu_count()} (shared with other jobs)")
    print(f"- python: {platform.python_version()}; runs per store: {args.runs}")
    print(f"- filling {args.runs} runs with log_batch: SQLite {fill_sqlite_s:.1f} s, "
          f"PostgreSQL {fill_pg_s:.1f} s")  # fmt: skip
    print()
    print("| store | compare (s) | register, first (s) | register, again (s) |")
    print("| --- | ---: | ---: | ---: |")
    for name, r in results.items():
        print(f"| {name} | {r['compare_s']:.2f} | {r['register_first_s']:.2f} | "
              f"{r['register_again_s']:.2f} |")  # fmt: skip


def _delete_registered_model(uri: str) -> None:
    import mlflow

    os.environ["MLFLOW_TRACKING_USERNAME"] = "admin"
    os.environ["MLFLOW_TRACKING_PASSWORD"] = PASSWORD
    client = mlflow.MlflowClient(tracking_uri=uri)
    for model in client.search_registered_models():
        client.delete_registered_model(model.name)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
