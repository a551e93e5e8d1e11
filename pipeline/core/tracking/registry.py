"""The MLflow Model Registry: versions, their lineage tags and aliases."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from pipeline.core.errors import TrackingError
from pipeline.core.receipt import StoreFacts, no_champion, workspace_run_id
from pipeline.core.tracking.store import client, error_line, is_server

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)

# Two machines writing the same tag or alias at once: MLflow's store reads, then inserts,
# so the second insert breaks the primary key (PostgreSQL: UniqueViolation). The row now
# exists, and writing again updates it.
_RACE_MARKS = ("UniqueViolation", "duplicate key", "UNIQUE constraint failed")


def _write(call: Callable[[], object], attempts: int = 3) -> None:
    import mlflow

    for attempt in range(attempts):
        try:
            call()
            return
        except mlflow.exceptions.MlflowException as e:
            if attempt == attempts - 1 or not any(m in str(e) for m in _RACE_MARKS):
                raise
            time.sleep(0.05 * (attempt + 1))


def versions_of_run(name: str, run_id: str) -> list[ModelVersion]:
    """Every version of ``name`` made from ``run_id``, lowest first (none if the
    registered model does not exist yet)."""
    import mlflow

    try:
        found = client().search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except mlflow.exceptions.MlflowException:
        return []
    return sorted(found, key=lambda v: int(v.version))


def version_of_run(name: str, run_id: str) -> ModelVersion | None:
    """The registered version made from ``run_id`` (the lowest, if several), if any."""
    found = versions_of_run(name, run_id)
    return found[0] if found else None


def register(model_uri: str, name: str, tags: Mapping[str, str]) -> ModelVersion:
    """Create a new version of ``name`` from a logged model, tagged with its lineage."""
    import mlflow

    try:
        return mlflow.register_model(model_uri, name, tags=dict(tags))
    except mlflow.exceptions.MlflowException as e:
        raise TrackingError(f"cannot register {model_uri} as {name}: {error_line(e)}") from None


def alias_target(name: str, alias: str) -> ModelVersion | None:
    """The version ``name@alias`` points at; None if the model, alias or version is gone."""
    import mlflow

    try:
        return client().get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException as e:
        log.info("%s@%s not found (%s)", name, alias, error_line(e))
        return None


def model_version(name: str, version: str) -> ModelVersion | None:
    import mlflow

    try:
        return client().get_model_version(name, version)
    except mlflow.exceptions.MlflowException:
        return None


def model_versions(name: str) -> list[ModelVersion]:
    """Every version of a registered model (none if it does not exist yet)."""
    import mlflow

    try:
        return list(client().search_model_versions(f"name = '{name}'"))
    except mlflow.exceptions.MlflowException as e:
        raise TrackingError(f"cannot list the versions of {name}: {error_line(e)}") from None


def set_alias(name: str, alias: str, version: str) -> None:
    import mlflow

    try:
        _write(lambda: client().set_registered_model_alias(name, alias, version))
    except mlflow.exceptions.MlflowException as e:
        raise TrackingError(f"cannot set {name}@{alias}: {error_line(e)}") from None


def set_version_tags(name: str, version: str, tags: Mapping[str, str]) -> None:
    """Tag a model version (the registry page shows them).

    MLflow sets one tag per request, and against a tracking server each costs two round
    trips (its client first checks the model is not a prompt): a gate record's ten tags
    took 2.2 s one after the other on the team server, so there they go out at once. A
    local store takes them one by one (SQLite writes one at a time anyway).
    """
    import mlflow

    def tag(item: tuple[str, str]) -> None:
        _write(lambda: client().set_model_version_tag(name, version, *item))

    workers = min(8, len(tags)) if is_server(mlflow.get_tracking_uri()) else 1
    try:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            list(pool.map(tag, tags.items()))  # the first failure is raised here
    except mlflow.exceptions.MlflowException as e:
        raise TrackingError(f"cannot tag {name} version {version}: {error_line(e)}") from None


def set_description(name: str, version: str, text: str) -> None:
    """The version's description (Markdown, shown on its registry page)."""
    import mlflow

    try:
        client().update_model_version(name, version, description=text)
    except mlflow.exceptions.MlflowException as e:
        raise TrackingError(f"cannot describe {name} version {version}: {error_line(e)}") from None


def delete_alias(name: str, alias: str) -> None:
    """Remove ``name@alias`` (nothing happens if it does not exist)."""
    import mlflow

    try:
        client().delete_registered_model_alias(name, alias)
    except mlflow.exceptions.MlflowException as e:
        if getattr(e, "error_code", None) != "RESOURCE_DOES_NOT_EXIST":
            raise TrackingError(f"cannot remove {name}@{alias}: {error_line(e)}") from None


_FINISHED = "attributes.status = 'FINISHED'"


def store_facts(experiment: str, workspace_run: str | None) -> StoreFacts:
    """What the current store holds of ``experiment`` and of the workspace's run: the facts
    :func:`pipeline.core.receipt.no_champion` explains a missing champion from."""
    from pipeline.core.tracking.runs import get_run, search_runs
    from pipeline.core.tracking.store import find_experiment, store_label

    experiment_id = find_experiment(experiment)
    finished = len(search_runs(experiment_id, _FINISHED)) if experiment_id else 0
    known = workspace_run is not None and get_run(workspace_run) is not None
    return StoreFacts(store_label(), finished, workspace_run, known)


def why_no_champion(name: str, alias: str, experiment: str) -> str:
    """One line: why ``name@alias`` is missing from the current store, and the fix."""
    facts = store_facts(experiment, workspace_run_id())
    return no_champion(name, alias, facts)
