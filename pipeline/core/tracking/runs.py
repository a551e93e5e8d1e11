"""MLflow runs: start and end them, log params, metrics, datasets and artifacts, and find
them again (the model: tracking/models.py)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core.cli import interrupts_deferred  # writes: Ctrl-C waits for their end
from pipeline.core.errors import TrackingError
from pipeline.core.tags import MODEL_URI_TAG
from pipeline.core.tracking.store import client, error_line

if TYPE_CHECKING:  # imported lazily at run time: MLflow and Keras take seconds to import
    import keras
    import numpy as np
    import pandas as pd
    from mlflow.data.dataset import Dataset
    from mlflow.entities import Run

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"  # MLflow's own nesting tag (the UI folds children)


@contextlib.contextmanager
def active_run(
    run_id: str | None = None,
    *,
    experiment_id: str | None = None,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
    system_metrics: bool = False,
) -> Iterator[str]:
    """Start (or resume) a run; on exit mark it FINISHED, FAILED, or KILLED on interrupt.

    ``parent_run_id``: nest it (a sweep trial under its sweep). ``system_metrics``: MLflow
    samples CPU, memory (and GPU) into ``system/*`` metrics.
    """
    import mlflow

    tags = {**(tags or {}), **({PARENT_TAG: parent_run_id} if parent_run_id else {})}
    try:
        with interrupts_deferred():
            run = mlflow.start_run(
                run_id=run_id,
                experiment_id=experiment_id,
                run_name=run_name,
                tags=tags,
                log_system_metrics=system_metrics,
            )
    except mlflow.exceptions.MlflowException as e:
        raise TrackingError(f"cannot start MLflow run: {error_line(e)}") from None
    except KeyboardInterrupt:  # interrupted while starting: a run already created is KILLED
        if mlflow.active_run() is not None:
            end_run("KILLED")
        raise
    status = "FAILED"
    try:
        yield run.info.run_id
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except mlflow.exceptions.MlflowException as e:  # e.g. the server went away mid-run
        raise TrackingError(f"MLflow run {run.info.run_id}: {error_line(e)}") from None
    finally:
        end_run(status)
        log.info("MLflow run %s %s", run.info.run_id, status)


@interrupts_deferred()
def end_run(status: str) -> None:
    """End the active run as FINISHED, FAILED or KILLED (a failing store only warns)."""
    import mlflow

    run = mlflow.active_run()
    try:
        mlflow.end_run(status=status)
    except Exception as e:  # the store itself may be what failed
        run_id = run.info.run_id if run else "(none)"
        log.warning("could not mark run %s %s: %s", run_id, status, error_line(e))


@interrupts_deferred()
def create_run(experiment_id: str, run_name: str, tags: Mapping[str, str]) -> str:
    """A new RUNNING run that is not made active here (e.g. a sweep's parent run)."""
    import mlflow

    try:
        run = client().create_run(experiment_id, run_name=run_name, tags=dict(tags))
    except mlflow.exceptions.MlflowException as e:
        raise TrackingError(f"cannot create MLflow run {run_name}: {error_line(e)}") from None
    return run.info.run_id


@interrupts_deferred()
def terminate(run_id: str, status: str) -> None:
    """Mark a run that is not the active one FINISHED, FAILED or KILLED (e.g. a trial whose
    worker died: the worker that notices it ends the dead worker's run)."""
    import mlflow

    try:
        client().set_terminated(run_id, status)
    except mlflow.exceptions.MlflowException as e:
        log.warning("could not mark run %s %s: %s", run_id, status, error_line(e))


@interrupts_deferred()
def set_running(run_id: str) -> None:
    """Reopen a run (a resumed sweep's parent)."""
    client().update_run(run_id, status="RUNNING")


@interrupts_deferred()
def log_params(params: Mapping[str, Any], run_id: str | None = None) -> None:
    """Log flattened params to the active run or ``run_id`` (lists joined by commas)."""
    import mlflow
    from mlflow.entities import Param

    values = {k: _param_value(v) for k, v in params.items()}
    if run_id is None:
        mlflow.log_params(values)
    else:
        client().log_batch(run_id, params=[Param(k, str(v)) for k, v in values.items()])


def _param_value(value: Any) -> Any:
    """As a person reads it: lists joined by commas, whole floats as integers (10, not
    10.0: the compare view shows params as strings)."""
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


@interrupts_deferred()
def log_metrics(
    metrics: Mapping[str, float], step: int | None = None, run_id: str | None = None
) -> None:
    """Log to the active run, or to ``run_id`` (e.g. a sweep's parent) when given."""
    import mlflow

    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step, run_id=run_id)


@interrupts_deferred()
def set_tags(tags: Mapping[str, str], run_id: str | None = None) -> None:
    """Tag the active run, or ``run_id`` when given."""
    import mlflow

    if run_id is None:
        mlflow.set_tags(dict(tags))
        return
    for key, value in tags.items():
        client().set_tag(run_id, key, value)


@interrupts_deferred()
def log_dataset(
    x: np.ndarray, y: np.ndarray, *, name: str, source: Path, digest: str, context: str
) -> Dataset:
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


@interrupts_deferred()
def log_model_metrics(metrics: Mapping[str, float], dataset: Dataset | None = None) -> None:
    """Log run metrics that are also linked to the run's logged model (MLflow 3
    ``LoggedModel``), so the experiment's Models view ranks models by them."""
    import mlflow

    run = mlflow.active_run()
    model_uri = client().get_run(run.info.run_id).data.tags.get(MODEL_URI_TAG, "")
    model_id = model_uri.removeprefix("models:/") or None
    mlflow.log_metrics(
        {k: float(v) for k, v in metrics.items()}, model_id=model_id, dataset=dataset
    )


@interrupts_deferred()
def log_artifact(path: Path, artifact_dir: str | None = None) -> None:
    import mlflow

    mlflow.log_artifact(str(path), artifact_path=artifact_dir)


@interrupts_deferred()
def log_text(text: str, artifact_file: str, run_id: str | None = None) -> None:
    """A text artifact of the active run, or of ``run_id`` when given."""
    import mlflow

    if run_id is None:
        mlflow.log_text(text, artifact_file)
        return
    try:
        client().log_text(run_id, text, artifact_file)
    except mlflow.exceptions.MlflowException as e:
        raise TrackingError(
            f"cannot log {artifact_file} to run {run_id}: {error_line(e)}"
        ) from None


def download_artifact(run_id: str, artifact_file: str, dst: Path) -> Path | None:
    """A run's artifact copied into ``dst``; None if the run has no such artifact."""
    import mlflow

    try:
        root = client().get_run(run_id).info.artifact_uri.rstrip("/")
        return Path(
            mlflow.artifacts.download_artifacts(f"{root}/{artifact_file}", dst_path=str(dst))
        )
    except (mlflow.exceptions.MlflowException, OSError):
        return None


def read_text_artifact(run: str | Run, artifact_file: str) -> str | None:
    """A run's text artifact (``evaluation/per_class.csv``), None if it has none. ``run``:
    its id, or the Run when the caller has it already (one request fewer).

    Read from the run's artifact URI: a ``runs:/`` URI costs a tracking server three more
    round trips (the run again and MLflow 3's logged-model lookup) for every file."""
    import mlflow

    try:
        run_obj = client().get_run(run) if isinstance(run, str) else run
        root = run_obj.info.artifact_uri.rstrip("/")
        return mlflow.artifacts.load_text(f"{root}/{artifact_file}")
    except (mlflow.exceptions.MlflowException, OSError):
        return None


def dataset_sizes(run: Run) -> dict[str, int]:
    """Images per logged dataset input of a run: ``{"train": 55000, "val": 5000, ...}``
    (from the inputs train and evaluate log, named ``mnist-<split>``)."""
    import json

    sizes = {}
    for item in run.inputs.dataset_inputs if run.inputs else ():
        dataset = item.dataset
        try:
            shape = json.loads(dataset.profile or "{}").get("features_shape") or []
        except ValueError:
            continue
        if shape:
            sizes[dataset.name.removeprefix("mnist-")] = int(shape[0])
    return sizes


CURVES = "curves/"  # the learning curves' chart section in the MLflow UI


def epoch_logger() -> keras.callbacks.Callback:
    """A Keras callback logging every epoch's metrics to the active run as the learning
    curves ``curves/loss``, ``curves/val_accuracy``, ..., step = epoch."""
    from pipeline.core.backend import keras
    from pipeline.core.metrics import float32_value

    class EpochLogger(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            curves = {f"{CURVES}{k}": float32_value(v) for k, v in (logs or {}).items()}
            log_metrics(curves, step=epoch + 1)

    return EpochLogger()


def get_run(run_id: str) -> Run | None:
    import mlflow

    try:
        return client().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return None


def search_runs(
    experiment_id: str, filter_string: str = "", columns: Sequence[str] = ()
) -> pd.DataFrame:
    """``mlflow.search_runs`` newest first. ``columns`` (``metrics.val_accuracy``, ...) are
    there even when nothing matched or no run logged them (as None), so callers can rely
    on them; ``run_id``, ``status``, ``start_time``, ``end_time`` and the model tag always."""
    import mlflow

    df = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=filter_string,
        order_by=["attributes.start_time DESC"],
    )
    base = ("run_id", "status", "start_time", "end_time", f"tags.{MODEL_URI_TAG}")
    for column in (*base, *columns):
        if column not in df:
            df[column] = None
    return df
