"""Everything that talks to MLflow lives here; stages call these functions only.

Default store: SQLite ``mlflow.db`` with artifacts in ``mlartifacts/``, both at the root of
the *main* workspace — also when DVC runs an experiment in a temporary copy under
``.dvc/tmp/exps/`` — so workspace runs, ``dvc exp run`` and queued experiments all land in
one store. ``MLFLOW_TRACKING_URI`` overrides it (e.g. a shared ``mlflow server``).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import re
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:  # imported lazily at run time: MLflow and Keras take seconds to import
    import keras
    import numpy as np
    from mlflow.entities import Run
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.pyfunc import PyFuncModel

from pipeline.core.errors import TrackingError

log = logging.getLogger(__name__)

DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
_EXPS_TMP = (".dvc", "tmp", "exps")
# SQLite waits this long for another writer (a second queue worker) instead of failing
# with "database is locked".
_SQLITE_TIMEOUT_S = 60
MODEL_URI_TAG = "model.uri"  # set on a run once its model is logged
# MLflow 3's UI opens an experiment without this tag on its GenAI overview (traces).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


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


def _username(uri: str, env: Mapping[str, str] = os.environ) -> str | None:
    """Who the client signs in as: ``MLFLOW_TRACKING_USERNAME``, else the URI's user."""
    return env.get("MLFLOW_TRACKING_USERNAME") or urllib.parse.urlsplit(uri).username


def _get(uri: str, path: str, timeout_s: float) -> None:
    """GET ``path`` on the server, signed in as MLflow's client would (basic auth from
    ``MLFLOW_TRACKING_USERNAME``/``_PASSWORD`` or the URI). An HTTP error passes through;
    no answer at all is one line naming the server."""
    parts = urllib.parse.urlsplit(uri)
    url = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl().rstrip("/")
    request = urllib.request.Request(url + path)
    user = _username(uri)
    if user:
        password = os.environ.get("MLFLOW_TRACKING_PASSWORD") or parts.password or ""
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            resp.read(1024)
    except urllib.error.HTTPError:
        raise
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TrackingError(f"tracking server {redact(uri)} is unreachable: {reason}") from None


def _check_server(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast (one line, naming the URI) when an HTTP tracking server does not answer."""
    try:
        _get(uri, "/health", timeout_s)
    except urllib.error.HTTPError as e:
        raise TrackingError(f"tracking server {redact(uri)} answered HTTP {e.code}") from None


def use_store() -> str:
    """Point MLflow at the store (checking that a server answers); return its URI."""
    import mlflow

    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        # MLflow retries a failed request 7 times with growing waits (minutes in all); a
        # server that went away should fail the stage in seconds. Users may still override.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        if redact(uri) != uri:  # MLflow prints "View run at <uri>…", credentials and all
            os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        _check_server(uri)
        _check_credentials(uri)
    mlflow.set_tracking_uri(uri)
    return uri


def connect(experiment: str) -> str:
    """:func:`use_store`, then the experiment's id (created if it does not exist yet)."""
    import mlflow

    uri = use_store()
    try:
        exp = mlflow.get_experiment_by_name(experiment)
        if exp is None:
            location = None if uri.startswith(("http", "databricks")) else artifact_location()
            try:
                return mlflow.create_experiment(
                    experiment, artifact_location=location, tags=EXPERIMENT_KIND
                )
            except mlflow.exceptions.MlflowException:
                exp = mlflow.get_experiment_by_name(experiment)  # a parallel worker won
                if exp is None:
                    raise
        for key, value in EXPERIMENT_KIND.items():  # stores made before the tag existed
            if key not in exp.tags:
                _client().set_experiment_tag(exp.experiment_id, key, value)
        return exp.experiment_id
    except mlflow.exceptions.MlflowException as e:
        raise TrackingError(f"tracking store {redact(uri)}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    """The gist of an MLflow error, on one line and without credentials."""
    if getattr(e, "error_code", None) in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
        return _auth_problem(e)
    return redact((str(e).strip().splitlines() or [type(e).__name__])[0])[:300]


def git_tags(cwd: Path | None = None) -> dict[str, str]:
    """Commit, and whether the code differed from it.

    params.yaml and dvc.lock don't count as dirty: params are logged one by one, and
    ``dvc exp run -S`` changes exactly those two files.
    """

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git(
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            ":!dvc.lock",
            ":!params.yaml",
        )
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


def run_name(env: Mapping[str, str] = os.environ) -> str:
    """The DVC experiment's name, else ``workspace-<UTC time>``.

    Named here, not by MLflow: its random names come from Python's ``random``, which the
    train stage seeds, so every workspace run would get the same "random" name.
    """
    import datetime

    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    return env.get("DVC_EXP_NAME") or f"workspace-{stamp}"


@contextlib.contextmanager
def active_run(
    run_id: str | None = None,
    *,
    experiment_id: str | None = None,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    system_metrics: bool = False,
) -> Iterator[str]:
    """Start (or resume) a run; on exit mark it FINISHED, FAILED, or KILLED on interrupt.

    ``system_metrics``: MLflow samples CPU, memory (and GPU) into ``system/*`` metrics.
    """
    import mlflow

    try:
        run = mlflow.start_run(
            run_id=run_id,
            experiment_id=experiment_id,
            run_name=run_name,
            tags=dict(tags or {}),
            log_system_metrics=system_metrics,
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
    except mlflow.exceptions.MlflowException as e:  # e.g. the server went away mid-run
        raise TrackingError(f"MLflow run {run.info.run_id}: {_first_line(e)}") from None
    finally:
        end_run(status)
        log.info("MLflow run %s %s", run.info.run_id, status)


def log_params(params: Mapping[str, Any]) -> None:
    """Log flattened params (values as strings; lists joined by commas)."""
    import mlflow

    mlflow.log_params(
        {k: ",".join(map(str, v)) if isinstance(v, list) else v for k, v in params.items()}
    )


def log_metrics(
    metrics: Mapping[str, float], step: int | None = None, run_id: str | None = None
) -> None:
    """Log to the active run, or to ``run_id`` (e.g. a sweep's parent) when given."""
    import mlflow

    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step, run_id=run_id)


def log_dataset(
    x: np.ndarray, y: np.ndarray, *, name: str, source: Path, digest: str, context: str
) -> Any:
    """Log a split as one of the run's dataset inputs; return MLflow's dataset object.

    ``digest`` is DVC's content hash of ``source`` (the file's MD5), so the MLflow UI's
    Dataset column and dvc.lock name the same bytes.
    """
    import warnings

    import mlflow

    with warnings.catch_warnings():  # MLflow registers its local source class twice
        warnings.filterwarnings("ignore", "The specified dataset source can be interpreted")
        dataset = mlflow.data.from_numpy(
            x, targets=y, source=source.as_posix(), name=name, digest=digest
        )
    mlflow.log_input(dataset, context=context)
    return dataset


def log_model_metrics(metrics: Mapping[str, float], dataset: Any = None) -> None:
    """Log run metrics that are also linked to the run's logged model (MLflow 3
    ``LoggedModel``), so the experiment's Models view ranks models by them."""
    import mlflow

    run = mlflow.active_run()
    model_uri = _client().get_run(run.info.run_id).data.tags.get(MODEL_URI_TAG, "")
    model_id = model_uri.removeprefix("models:/") or None
    mlflow.log_metrics(
        {k: float(v) for k, v in metrics.items()}, model_id=model_id, dataset=dataset
    )


def log_artifact(path: Path, artifact_dir: str | None = None) -> None:
    import mlflow

    mlflow.log_artifact(str(path), artifact_path=artifact_dir)


def log_text(text: str, artifact_file: str) -> None:
    import mlflow

    mlflow.log_text(text, artifact_file)


def epoch_logger() -> keras.callbacks.Callback:
    """A Keras callback logging every epoch's metrics to the active run, step = epoch."""
    import keras

    class EpochLogger(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            log_metrics(logs or {}, step=epoch + 1)

    return EpochLogger()


def _pip_requirements() -> list[str]:
    """Pinned from what is installed: inferring them costs MLflow ~7 s per model."""
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("mlflow", "keras", "tensorflow", "numpy")]


def log_model(model: keras.Model, input_example: np.ndarray) -> str:
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
    mlflow.set_tag(MODEL_URI_TAG, info.model_uri)
    return info.model_uri


def load_pyfunc(model_uri: str) -> PyFuncModel:
    """Load a logged or registered model (``models:/name@alias``, ``runs:/...``) for predict.

    A missing registered model, alias or artifact becomes one line naming the URI.
    """
    import mlflow

    try:
        return mlflow.pyfunc.load_model(model_uri)
    except (mlflow.exceptions.MlflowException, OSError) as e:
        raise TrackingError(f"cannot load {model_uri}: {_first_line(e)}") from None


# --- Model registry -------------------------------------------------------------------


def _search_runs(experiment_id: str, filter_string: str = "") -> pd.DataFrame:
    """``mlflow.search_runs`` newest first, with the columns later code relies on even when
    nothing matched (an empty result has no columns at all)."""
    import mlflow

    df = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=filter_string,
        order_by=["attributes.start_time DESC"],
    )
    for column in (
        "run_id",
        "status",
        "start_time",
        "end_time",
        "metrics.test_accuracy",
        "metrics.test_loss",
        f"tags.{MODEL_URI_TAG}",
    ):
        if column not in df:
            df[column] = None
    return df


def finished_runs(experiment_id: str) -> pd.DataFrame:
    """Runs that completed train *and* evaluate (FINISHED, with a test_accuracy).

    RUNNING (perhaps killed with SIGKILL), FAILED and KILLED runs are left out.
    """
    return _search_runs(
        experiment_id, "attributes.status = 'FINISHED' and metrics.test_accuracy >= 0"
    )


def all_runs(experiment_id: str) -> pd.DataFrame:
    """Every run of the experiment, whatever its status."""
    return _search_runs(experiment_id)


def _client():
    import mlflow

    return mlflow.MlflowClient()


def version_of_run(name: str, run_id: str) -> ModelVersion | None:
    """The registered version already made from ``run_id``, if any."""
    import mlflow

    try:
        found = _client().search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except mlflow.exceptions.MlflowException:
        return None  # the registered model does not exist yet
    return min(found, key=lambda v: int(v.version)) if found else None


def register(model_uri: str, name: str, tags: Mapping[str, str]) -> ModelVersion:
    """Create a new version of ``name`` from a logged model, tagged with its lineage."""
    import mlflow

    try:
        return mlflow.register_model(model_uri, name, tags=dict(tags))
    except mlflow.exceptions.MlflowException as e:
        raise TrackingError(f"cannot register {model_uri} as {name}: {_first_line(e)}") from None


def alias_target(name: str, alias: str) -> ModelVersion | None:
    """The version ``name@alias`` points at; None if the model, alias or version is gone."""
    import mlflow

    try:
        return _client().get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException as e:
        log.info("%s@%s not found (%s)", name, alias, _first_line(e))
        return None


def model_version(name: str, version: str) -> ModelVersion | None:
    import mlflow

    try:
        return _client().get_model_version(name, version)
    except mlflow.exceptions.MlflowException:
        return None


def set_alias(name: str, alias: str, version: str) -> None:
    import mlflow

    try:
        _client().set_registered_model_alias(name, alias, version)
    except mlflow.exceptions.MlflowException as e:
        raise TrackingError(f"cannot set {name}@{alias}: {_first_line(e)}") from None


def get_run(run_id: str) -> Run | None:
    import mlflow

    try:
        return _client().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return None


# --- Sweeps (pipeline.tune): a parent run per study, one nested run per trial -----------

PARENT_TAG = "mlflow.parentRunId"  # MLflow's own nesting tag (the UI folds children)


def create_run(experiment_id: str, run_name: str, tags: Mapping[str, str]) -> str:
    """A new RUNNING run that is not made active here (e.g. a sweep's parent run)."""
    import mlflow

    try:
        run = _client().create_run(experiment_id, run_name=run_name, tags=dict(tags))
    except mlflow.exceptions.MlflowException as e:
        raise TrackingError(f"cannot create MLflow run {run_name}: {_first_line(e)}") from None
    return run.info.run_id


def start_child_run(
    experiment_id: str, parent_run_id: str, run_name: str, tags: Mapping[str, str]
) -> str:
    """Start (make active) a run nested under ``parent_run_id``; end it with end_run()."""
    import mlflow

    try:
        run = mlflow.start_run(
            experiment_id=experiment_id,
            run_name=run_name,
            tags={**tags, PARENT_TAG: parent_run_id},
        )
    except mlflow.exceptions.MlflowException as e:
        raise TrackingError(f"cannot start MLflow run: {_first_line(e)}") from None
    return run.info.run_id


def end_run(status: str) -> None:
    """End the active run as FINISHED, FAILED or KILLED (a failing store only warns)."""
    import mlflow

    run = mlflow.active_run()
    try:
        mlflow.end_run(status=status)
    except Exception as e:  # the store itself may be what failed
        run_id = run.info.run_id if run else "(none)"
        log.warning("could not mark run %s %s: %s", run_id, status, _first_line(e))


def set_tags(tags: Mapping[str, str], run_id: str | None = None) -> None:
    """Tag the active run, or ``run_id`` when given."""
    import mlflow

    if run_id is None:
        mlflow.set_tags(dict(tags))
        return
    for key, value in tags.items():
        _client().set_tag(run_id, key, value)


def terminate(run_id: str, status: str) -> None:
    """Mark a run that is not the active one FINISHED, FAILED or KILLED (e.g. a trial whose
    worker died: the worker that notices it ends the dead worker's run)."""
    import mlflow

    try:
        _client().set_terminated(run_id, status)
    except mlflow.exceptions.MlflowException as e:
        log.warning("could not mark run %s %s: %s", run_id, status, _first_line(e))


def set_running(run_id: str) -> None:
    """Reopen a run (a resumed sweep's parent)."""
    _client().update_run(run_id, status="RUNNING")


# --- Accounts (a server started by pipeline.server: MLflow's basic-auth app) ------------


def _check_credentials(uri: str, timeout_s: float = 10.0) -> None:
    """Fail fast (one line) when a server with accounts refuses the client's credentials.

    ``/health`` needs no account, so this asks ``users/current``, which every account may
    read; a server without accounts answers 404 and passes.
    """
    user = _username(uri)
    try:
        _get(uri, "/api/2.0/mlflow/users/current", timeout_s)
    except urllib.error.HTTPError as e:
        if e.code != 401:
            return  # 404: no accounts on this server; anything else shows up on first use
        if not user:
            raise TrackingError(
                f"tracking server {redact(uri)} requires an account: set "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
            ) from None
        raise TrackingError(
            f"tracking server {redact(uri)} refused the credentials for user {user} (HTTP 401)"
        ) from None


def _auth_problem(e: BaseException) -> str:
    """A 401/403 from the server, said as what it is: a sign-in or permission problem."""
    import mlflow

    uri = redact(mlflow.get_tracking_uri())
    user = _username(mlflow.get_tracking_uri()) or "(anonymous)"
    endpoint = re.search(r"endpoint (\S+)", str(e))
    where = f" on {endpoint.group(1)}" if endpoint else ""
    if getattr(e, "error_code", None) == "UNAUTHENTICATED":
        return f"tracking server {uri} refused the credentials for user {user} (HTTP 401)"
    return (
        f"permission denied (HTTP 403): user {user} lacks the permission{where} on "
        f"tracking server {uri}; an admin can grant it (python -m pipeline.server users add)"
    )


def add_user(
    username: str, password: str, permission: str, *, experiment: str, model_name: str
) -> None:
    """Create an account (or keep the existing one) with ``permission`` (READ, EDIT or
    MANAGE) on the experiment and the registered model; the caller must be an admin."""
    import mlflow
    from mlflow.server import get_app_client

    experiment_id = connect(experiment)  # created by the admin if it does not exist yet
    client = get_app_client("basic-auth", tracking_uri=mlflow.get_tracking_uri())
    try:
        try:
            client.create_user(username, password)
            log.info("created user %s", username)
        except mlflow.exceptions.MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            log.info("user %s exists; setting its permission", username)
        # Granted on the model's name, so it holds for the model registered later, too.
        for kind, resource in (("experiment", experiment_id), ("registered_model", model_name)):
            with contextlib.suppress(mlflow.exceptions.MlflowException):
                client.revoke_user_permission(username, kind, resource)  # none yet: fine
            client.grant_user_permission(username, kind, resource, permission)
            log.info("%s: %s on %s %s", username, permission, kind, resource)
    except mlflow.exceptions.MlflowException as e:
        raise TrackingError(f"cannot set up user {username}: {_first_line(e)}") from None


def model_versions(name: str) -> list[ModelVersion]:
    """Every version of a registered model (none if it does not exist yet)."""
    import mlflow

    try:
        return list(_client().search_model_versions(f"name = '{name}'"))
    except mlflow.exceptions.MlflowException as e:
        raise TrackingError(f"cannot list the versions of {name}: {_first_line(e)}") from None
