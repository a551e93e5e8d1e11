"""Everything that talks to MLflow lives here; stages call these functions only.

Default store: SQLite ``mlflow.db`` with artifacts in ``mlartifacts/``, both at the root of
the *main* workspace — also when DVC runs an experiment in a temporary copy under
``.dvc/tmp/exps/`` — so workspace runs, ``dvc exp run`` and queued experiments all land in
one store. ``MLFLOW_TRACKING_URI`` overrides it (e.g. a shared ``mlflow server``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pipeline.errors import TrackingError

log = logging.getLogger(__name__)

DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
_EXPS_TMP = (".dvc", "tmp", "exps")
# SQLite waits this long for another writer (a second queue worker) instead of failing
# with "database is locked".
_SQLITE_TIMEOUT_S = 60


def project_root(start: Path | None = None) -> Path:
    """The main workspace: the cwd, or the repo that owns a DVC temp copy under .dvc/tmp/exps."""
    here = (start or Path.cwd()).resolve()
    parts = here.parts
    for i in range(len(parts) - len(_EXPS_TMP)):
        if parts[i : i + len(_EXPS_TMP)] == _EXPS_TMP:
            return Path(*parts[:i])
    return here


def tracking_uri(env: Mapping[str, str] = os.environ) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the SQLite store at the main workspace's root."""
    uri = env.get("MLFLOW_TRACKING_URI", "").strip()
    if uri:
        return uri
    return f"sqlite:///{project_root() / DB_NAME}?timeout={_SQLITE_TIMEOUT_S}"


def artifact_location() -> str:
    """Where a new experiment in the default store keeps its artifacts."""
    return (project_root() / ARTIFACTS_DIR).as_uri()


def redact(uri: str) -> str:
    """Hide credentials in a URI (``http://user:pw@host`` -> ``http://***@host``)."""
    return re.sub(r"(?<=://)[^/@]+@", "***@", uri)


def _check_server(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast (one line, naming the URI) when an HTTP tracking server does not answer."""
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            resp.read(64)
    except urllib.error.HTTPError as e:
        raise TrackingError(f"tracking server {redact(uri)} answered HTTP {e.code}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TrackingError(f"tracking server {redact(uri)} is unreachable: {reason}") from None


def connect(experiment: str) -> str:
    """Point MLflow at the store, check it answers, and return the experiment's id."""
    import mlflow

    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        _check_server(uri)
    mlflow.set_tracking_uri(uri)
    try:
        exp = mlflow.get_experiment_by_name(experiment)
        if exp is None:
            location = None if uri.startswith(("http", "databricks")) else artifact_location()
            try:
                return mlflow.create_experiment(experiment, artifact_location=location)
            except mlflow.exceptions.MlflowException:
                exp = mlflow.get_experiment_by_name(experiment)  # a parallel worker won
                if exp is None:
                    raise
        return exp.experiment_id
    except mlflow.exceptions.MlflowException as e:
        raise TrackingError(f"tracking store {redact(uri)}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def git_tags(cwd: Path | None = None) -> dict[str, str]:
    """Commit and dirtiness of the code that ran (dvc.lock changes don't count as dirty)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!dvc.lock")
    except (OSError, subprocess.CalledProcessError):
        return {"git.commit": "unknown"}
    return {"git.commit": commit, "git.dirty": str(bool(dirty)).lower()}


def dvc_tags(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The DVC experiment this run belongs to, when ``dvc exp run`` started it."""
    tags = {}
    if env.get("DVC_EXP_NAME"):
        tags["dvc.exp_name"] = env["DVC_EXP_NAME"]
    if env.get("DVC_EXP_BASELINE_REV"):
        tags["dvc.baseline_rev"] = env["DVC_EXP_BASELINE_REV"]
    return tags


@contextlib.contextmanager
def active_run(
    run_id: str | None = None,
    *,
    experiment_id: str | None = None,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> Iterator[str]:
    """Start (or resume) a run; on exit mark it FINISHED, FAILED, or KILLED on interrupt."""
    import mlflow

    try:
        run = mlflow.start_run(
            run_id=run_id, experiment_id=experiment_id, run_name=run_name, tags=dict(tags or {})
        )
    except mlflow.exceptions.MlflowException as e:
        raise TrackingError(f"cannot start MLflow run: {_first_line(e)}") from None
    status = "FAILED"
    try:
        yield run.info.run_id
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        try:
            mlflow.end_run(status=status)
        except Exception as e:  # the store itself may be what failed
            log.warning("could not mark run %s %s: %s", run.info.run_id, status, _first_line(e))
        log.info("MLflow run %s %s", run.info.run_id, status)


def log_params(params: Mapping[str, Any]) -> None:
    """Log flattened params (values as strings; lists joined by commas)."""
    import mlflow

    mlflow.log_params(
        {k: ",".join(map(str, v)) if isinstance(v, list) else v for k, v in params.items()}
    )


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    import mlflow

    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def set_tags(tags: Mapping[str, str]) -> None:
    import mlflow

    mlflow.set_tags(dict(tags))


def log_artifact(path: Path, artifact_dir: str | None = None) -> None:
    import mlflow

    mlflow.log_artifact(str(path), artifact_path=artifact_dir)


def log_text(text: str, artifact_file: str) -> None:
    import mlflow

    mlflow.log_text(text, artifact_file)


def epoch_logger():  # -> keras.callbacks.Callback
    """A Keras callback logging every epoch's metrics (and the learning rate), step = epoch."""
    import keras
    import mlflow

    class EpochLogger(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            mlflow.log_metrics({k: float(v) for k, v in (logs or {}).items()}, step=epoch + 1)

    return EpochLogger()


def _pip_requirements() -> list[str]:
    """Pinned from what is installed: inferring them costs MLflow ~7 s per model."""
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("mlflow", "keras", "tensorflow", "numpy")]


def log_model(model, input_example) -> str:  # (keras.Model, np.ndarray) -> model URI
    """Log the model in MLflow's Keras flavour with a signature and an input example.

    ``mlflow.keras.log_model(..., input_example=...)`` fails in MLflow 3.17 with
    FileNotFoundError: its save_model writes input_example.json before creating the
    model folder. ``Model.log`` with a flavour whose save_model creates the folder first
    records the same MLmodel (loader ``mlflow.keras``), signature and example included.
    """
    import types

    import mlflow
    from mlflow.models import Model, infer_signature

    def save_model(path: str, **kwargs: Any) -> None:
        os.makedirs(path, exist_ok=True)
        mlflow.keras.save_model(path=path, **kwargs)

    flavor = types.SimpleNamespace(__name__="mlflow.keras", save_model=save_model)
    signature = infer_signature(input_example, model.predict(input_example, verbose=0))
    info = Model.log(
        None,
        name="model",
        flavor=flavor,
        model=model,
        signature=signature,
        input_example=input_example,
        pip_requirements=_pip_requirements(),
    )
    return info.model_uri
