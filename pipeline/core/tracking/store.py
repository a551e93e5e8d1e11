"""Which MLflow store, signed in as whom: resolution, fail-fast probes, one-line errors.

Default store: SQLite ``mlflow.db`` with artifacts in ``mlartifacts/``, both at the root of
the *main* workspace — also when DVC runs an experiment in a temporary copy under
``.dvc/tmp/exps/`` — so workspace runs, ``dvc exp run`` and queued experiments all land in
one store. ``MLFLOW_TRACKING_URI`` overrides it (e.g. the team's ``pipeline.tracking_server``).
"""

from __future__ import annotations

import base64
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.core.errors import TrackingError, first_line, redact
from pipeline.core.layout import MLFLOW_ARTIFACTS, MLFLOW_DB, project_root
from pipeline.core.locks import file_lock, sqlite_path

if TYPE_CHECKING:
    from mlflow import MlflowClient

# SQLite waits this long for another writer (a second queue worker) instead of failing
# with "database is locked".
_SQLITE_TIMEOUT_S = 60
# MLflow 3's UI opens an experiment without this tag on its GenAI overview (traces).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def tracking_uri(env: Mapping[str, str] = os.environ) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the SQLite store at the main workspace's root."""
    uri = env.get("MLFLOW_TRACKING_URI", "").strip()
    if uri:
        return uri
    return f"sqlite:///{project_root() / MLFLOW_DB}?timeout={_SQLITE_TIMEOUT_S}"


def store_label(uri: str | None = None) -> str:
    """The store as a person names it, the same on every machine: ``mlflow.db`` for the
    default local store (whatever the checkout's path), else the URI without credentials."""
    uri = uri or tracking_uri()
    if uri == tracking_uri({}):
        return f"the local store {MLFLOW_DB}"
    return redact(uri.split("?", 1)[0] if uri.startswith("sqlite") else uri)


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def artifact_location() -> str:
    """Where a new experiment in the default store keeps its artifacts."""
    return (project_root() / MLFLOW_ARTIFACTS).as_uri()


def username(uri: str, env: Mapping[str, str] = os.environ) -> str | None:
    """Who the client signs in as: ``MLFLOW_TRACKING_USERNAME``, else the URI's user."""
    user = urllib.parse.urlsplit(uri).username
    # A URI's user and password are percent-encoded ("p%40ss" for "p@ss"); requests, and so
    # MLflow's client, decode them before signing in.
    return env.get("MLFLOW_TRACKING_USERNAME") or (urllib.parse.unquote(user) if user else None)


def client() -> MlflowClient:
    import mlflow

    return mlflow.MlflowClient()


def error_line(e: BaseException) -> str:
    """The gist of an MLflow error on one line; a 401/403 said as what it is."""
    if getattr(e, "error_code", None) in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
        return _auth_problem(e)
    return first_line(e)


def use_store() -> str:
    """Point MLflow at the store (checking that a server answers); return its URI."""
    import mlflow

    uri = tracking_uri()
    # MLflow draws a progress bar per artifact download: a terminal's, not a log's (serve,
    # monitor). Users may still turn it on.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if is_server(uri):
        # MLflow retries a failed request 7 times with growing waits (minutes in all); a
        # server that went away should fail the stage in seconds. Users may still override.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        if redact(uri) != uri:  # MLflow prints "View run at <uri>…", credentials and all
            os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        _probe(uri)
    mlflow.set_tracking_uri(uri)
    db = sqlite_path(uri)
    if db is not None:
        _create_once(uri, db)
    return uri


def _create_once(uri: str, db: Path) -> None:
    """Create (or find) the SQLite store's tables under :func:`file_lock`, so that one
    process runs MLflow's schema migrations and every later opener finds them done.

    MLflow's SQL stores create the schema when they first open a database without its
    tables (``_initialize_tables``: ``create_all`` then ~70 Alembic migrations), with no
    lock of their own: two processes opening a new ``mlflow.db`` at once migrated against
    each other (``alembic_version``: 0 rows matched; "duplicate column name"). Opening the
    tracking and the registry store here, one process at a time, leaves each later opener
    a complete schema, which MLflow only verifies.
    """
    import mlflow

    try:
        with file_lock(db):
            c = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
            c.search_experiments(max_results=1)  # the tracking store: tables, migrations
            c.search_registered_models(max_results=1)  # the registry store (same file)
    except (mlflow.exceptions.MlflowException, OSError) as e:
        raise TrackingError(f"tracking store {redact(uri)}: {error_line(e)}") from None


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
                try:
                    client().set_experiment_tag(exp.experiment_id, key, value)
                except mlflow.exceptions.MlflowException:  # another machine set it first
                    if mlflow.get_experiment(exp.experiment_id).tags.get(key) != value:
                        raise
        return exp.experiment_id
    except mlflow.exceptions.MlflowException as e:
        raise TrackingError(f"tracking store {redact(uri)}: {error_line(e)}") from None


def _probe(uri: str, timeout_s: float = 10.0) -> None:
    """Fail fast, in one line naming the server, when it does not answer or refuses the
    client's credentials: one signed-in GET of ``users/current``.

    Every account may read ``users/current``; a server without accounts answers 404 (it
    answered, so it is up); 401 means no or wrong credentials.
    """
    parts = urllib.parse.urlsplit(uri)
    url = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl().rstrip("/")
    request = urllib.request.Request(url + "/api/2.0/mlflow/users/current")
    user = username(uri)
    if user:  # as MLflow's client signs in: basic auth from the environment or the URI
        password = os.environ.get("MLFLOW_TRACKING_PASSWORD") or urllib.parse.unquote(
            parts.password or ""
        )
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            resp.read(1024)
    except urllib.error.HTTPError as e:
        if e.code == 401:
            if not user:
                raise TrackingError(
                    f"tracking server {redact(uri)} requires an account: set "
                    "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
                ) from None
            raise TrackingError(
                f"tracking server {redact(uri)} refused the credentials for user {user} (HTTP 401)"
            ) from None
        if e.code >= 500:
            raise TrackingError(f"tracking server {redact(uri)} answered HTTP {e.code}") from None
        # 404: no accounts on this server; anything else shows up on first use
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TrackingError(f"tracking server {redact(uri)} is unreachable: {reason}") from None


def _auth_problem(e: BaseException) -> str:
    """A 401/403 from the server, said as what it is: a sign-in or permission problem."""
    import mlflow

    uri = redact(mlflow.get_tracking_uri())
    user = username(mlflow.get_tracking_uri()) or "(anonymous)"
    endpoint = re.search(r"endpoint (\S+)", str(e))
    where = f" on {endpoint.group(1)}" if endpoint else ""
    if getattr(e, "error_code", None) == "UNAUTHENTICATED":
        return f"tracking server {uri} refused the credentials for user {user} (HTTP 401)"
    return (
        f"permission denied (HTTP 403): user {user} lacks the permission{where} on "
        f"tracking server {uri}; an admin can grant it "
        "(python -m pipeline.tracking_server users add)"
    )


def find_experiment(name: str) -> str | None:
    """The id of experiment ``name`` in the store :func:`use_store` chose; None if it does
    not exist (unlike :func:`connect`, nothing is created)."""
    import mlflow

    try:
        exp = mlflow.get_experiment_by_name(name)
    except mlflow.exceptions.MlflowException as e:
        raise TrackingError(
            f"tracking store {redact(mlflow.get_tracking_uri())}: {error_line(e)}"
        ) from None
    return exp.experiment_id if exp else None


# The UI's "Share" button stores a runs view (columns, sort, charts) in this experiment tag;
# ``#/experiments/<id>/runs?viewStateShareKey=<key>`` opens it in any browser.
SHARED_VIEW_TAG = "mlflow.sharedViewState."


def share_view(experiment_id: str, key: str, state: Mapping[str, object]) -> None:
    """Save a runs-table view state (``selectedColumns``, ``orderByKey``, ...) under
    ``key``, as the UI's Share button does (plain JSON, which the UI also reads)."""
    import json

    import mlflow

    try:
        client().set_experiment_tag(experiment_id, SHARED_VIEW_TAG + key, json.dumps(state))
    except mlflow.exceptions.MlflowException as e:
        raise TrackingError(f"cannot save the runs view {key}: {error_line(e)}") from None
