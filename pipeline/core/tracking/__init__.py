"""Everything that talks to MLflow lives in this package; stages call these functions only.

- :mod:`.store`: which store (local SQLite by default, ``MLFLOW_TRACKING_URI`` for a
  server), fail-fast probes of a server and its credentials, one-line MLflow errors;
- :mod:`.runs`: runs, their params, metrics, datasets, artifacts and logged model;
- :mod:`.registry`: registered versions, their tags, descriptions and aliases;
- :mod:`.accounts`: accounts on the team server (``pipeline.server users add``).

Git and DVC provenance (what goes into a run's tags) is :mod:`pipeline.core.provenance`,
which needs no MLflow.
"""

from pipeline.core.tracking.accounts import add_user
from pipeline.core.tracking.models import (
    PREDICTIONS_ARTIFACT,
    LoggedTest,
    download_model,
    load_pyfunc,
    log_model,
    logged_labels,
    logged_model_uri,
    model_info,
    predicted_labels,
)
from pipeline.core.tracking.registry import (
    alias_target,
    delete_alias,
    model_version,
    model_versions,
    register,
    set_alias,
    set_description,
    set_version_tags,
    version_of_run,
    versions_of_run,
)
from pipeline.core.tracking.runs import (
    MODEL_URI_TAG,
    PARENT_TAG,
    active_run,
    create_run,
    dataset_sizes,
    download_artifact,
    end_run,
    epoch_logger,
    get_run,
    log_artifact,
    log_dataset,
    log_metrics,
    log_model_metrics,
    log_params,
    log_text,
    read_text_artifact,
    search_runs,
    set_running,
    set_tags,
    terminate,
)
from pipeline.core.tracking.store import (
    connect,
    find_experiment,
    is_server,
    share_view,
    tracking_uri,
    use_store,
)

__all__ = [
    "MODEL_URI_TAG",
    "PARENT_TAG",
    "active_run",
    "add_user",
    "alias_target",
    "connect",
    "create_run",
    "delete_alias",
    "download_model",
    "dataset_sizes",
    "download_artifact",
    "end_run",
    "epoch_logger",
    "find_experiment",
    "get_run",
    "is_server",
    "load_pyfunc",
    "log_artifact",
    "log_dataset",
    "log_metrics",
    "log_model",
    "log_model_metrics",
    "log_params",
    "log_text",
    "model_version",
    "model_versions",
    "PREDICTIONS_ARTIFACT",
    "LoggedTest",
    "logged_labels",
    "predicted_labels",
    "model_info",
    "logged_model_uri",
    "read_text_artifact",
    "register",
    "search_runs",
    "set_alias",
    "set_description",
    "set_running",
    "set_tags",
    "set_version_tags",
    "share_view",
    "terminate",
    "tracking_uri",
    "use_store",
    "version_of_run",
    "versions_of_run",
]
