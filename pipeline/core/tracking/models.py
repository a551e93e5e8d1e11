"""Logged models: logging one (Keras flavour, signature, example), reading one back, and
the per-image test predictions that the promotion gate, ``compare --against`` and the
report test, taken from what evaluate logged when they are of the same test images."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core.cli import interrupts_deferred
from pipeline.core.errors import TrackingError
from pipeline.core.tags import MODEL_URI_TAG
from pipeline.core.tracking.runs import get_run, read_text_artifact
from pipeline.core.tracking.store import error_line

if TYPE_CHECKING:  # imported lazily at run time: MLflow and Keras take seconds to import
    import keras
    import numpy as np
    from mlflow.models.model import ModelInfo
    from mlflow.pyfunc import PyFuncModel

    from pipeline.core.inference import NumpyModel

log = logging.getLogger(__name__)


def _pip_requirements() -> list[str]:
    """Pinned from what is installed: inferring them costs MLflow ~7 s per model."""
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("mlflow", "keras", "tensorflow", "numpy")]


@interrupts_deferred()
def log_model(model: keras.Model, input_example: np.ndarray) -> str:
    """Log the model in MLflow's Keras flavour with a signature and an input example.

    ``mlflow.keras.log_model(..., input_example=...)`` fails in MLflow 3.17 with
    FileNotFoundError: its save_model writes input_example.json before creating the
    model folder. ``Model.log`` with a flavour whose save_model creates the folder first
    records the same MLmodel (loader ``mlflow.keras``), signature and example included.

    Two of MLflow's seconds are skipped (benchmarks/stage_overhead.py): the signature's
    output spec comes from the model's output shape, not from a traced predict, and the
    logged model is not reloaded to serve the example (``validate_serving_input``; the
    suite's predict and serve tests load logged models as users do).
    """
    import types

    import mlflow
    import numpy as np
    from mlflow.models import Model, infer_signature

    def save_model(path: str, validate_serving_input: bool = False, **kwargs: Any) -> None:
        os.makedirs(path, exist_ok=True)
        mlflow.keras.save_model(path=path, **kwargs)

    flavor = types.SimpleNamespace(__name__="mlflow.keras", save_model=save_model)
    # (1, 10) float32: the spec infer_signature would take from predict's output
    output = np.zeros((1, *model.output_shape[1:]), dtype=model.outputs[0].dtype)
    info = Model.log(
        None,
        name="model",
        flavor=flavor,
        model=model,
        signature=infer_signature(input_example, output),
        input_example=input_example,
        pip_requirements=_pip_requirements(),
        validate_serving_input=False,
    )
    mlflow.set_tag(MODEL_URI_TAG, info.model_uri)
    return info.model_uri


def logged_model_uri(run_id: str) -> str | None:
    """The URI of the model a run logged; None for an unknown run or one without."""
    run_obj = get_run(run_id)
    return run_obj.data.tags.get(MODEL_URI_TAG) if run_obj else None


def model_info(model_uri: str) -> ModelInfo:
    """A logged or registered model's MLmodel facts (its files read, not its weights)."""
    import mlflow

    try:
        return mlflow.models.get_model_info(model_uri)
    except (mlflow.exceptions.MlflowException, OSError) as e:
        raise TrackingError(f"cannot load {model_uri}: {error_line(e)}") from None


def load_pyfunc(model_uri: str) -> PyFuncModel:
    """Load a logged or registered model (``models:/name@alias``, ``runs:/...``) for predict.

    A missing registered model, alias or artifact becomes one line naming the URI.
    """
    import mlflow

    import pipeline.core.backend  # noqa: F401  (Keras first, so it skips scikit-learn)

    try:
        return mlflow.pyfunc.load_model(model_uri)
    except (mlflow.exceptions.MlflowException, OSError) as e:
        raise TrackingError(f"cannot load {model_uri}: {error_line(e)}") from None


def download_model(model_uri: str, dst: Path) -> Path:
    """A registered or logged model's files (its MLmodel folder) copied into ``dst``."""
    import mlflow

    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst)))
    except (mlflow.exceptions.MlflowException, OSError) as e:
        raise TrackingError(f"cannot load {model_uri}: {error_line(e)}") from None


PREDICTIONS_ARTIFACT = "evaluation/predictions.csv"  # evaluate's per-image test labels


def predicted_labels(model_uri: str, x: np.ndarray, logged: LoggedTest | None = None) -> np.ndarray:
    """The digit a logged or registered model predicts for each image (N×28×28 uint8):
    the per-image predictions that the promotion gate and ``compare --against`` test.

    With ``logged``, the labels that the model's run logged at evaluation are used when
    they are of these very images (:func:`logged_labels`): the same figures without
    loading the model, and so without importing TensorFlow (most of a gate's seconds).
    """
    if logged is not None:
        found = logged_labels(logged)
        if found is not None:
            model_info(model_uri)  # the model itself must still be there
            return found
    try:
        probs = predict_probabilities(model_uri, x)
    except TrackingError:
        raise
    except Exception as e:  # an unreadable model may fail only when it runs
        raise TrackingError(f"{model_uri} cannot predict: {error_line(e)}") from None
    return probs.argmax(axis=1)


def load_model_files(folder: Path, model_uri: str) -> tuple[str, NumpyModel | PyFuncModel]:
    """The model in a downloaded MLmodel ``folder``: ``("numpy", NumpyModel)``, the forward
    pass in NumPy (no TensorFlow to import, ~5 s a process), or ``("keras", pyfunc)`` for a
    model that pass does not implement (a bfloat16 one, another architecture, no ``.keras``
    file). Both answer ``predict(x)`` with (N, 10) probabilities."""
    from pipeline.core.errors import DataError
    from pipeline.core.inference import NumpyModel, UnsupportedModel

    try:
        return "numpy", NumpyModel.load(folder / "data" / "model.keras")
    except (UnsupportedModel, DataError) as e:
        log.info("%s: %s, predicting with Keras", model_uri, e)
    from pipeline.core.backend import keras

    keras.config.disable_interactive_logging()  # no progress bar per prediction in logs
    return "keras", load_pyfunc(str(folder))


def predict_probabilities(model_uri: str, x: np.ndarray) -> np.ndarray:
    """(N, 10) probabilities of a logged or registered model for ``x`` (N×28×28 uint8),
    scored as the service scores it (:func:`load_model_files`)."""
    import contextlib
    import sys
    import tempfile

    import numpy as np

    with tempfile.TemporaryDirectory(prefix="model-") as tmp:
        _, model = load_model_files(download_model(model_uri, Path(tmp)), model_uri)
        with contextlib.redirect_stdout(sys.stderr):  # what a flavour prints is not a result
            return np.asarray(model.predict(x), dtype=np.float64)


@dataclass(frozen=True)
class LoggedTest:
    """Which run's logged test predictions to use, and the test split they must be of:
    its labels ``y`` and its DVC hash ``digest`` (the run's ``data.test.md5`` tag)."""

    run_id: str
    y: np.ndarray
    digest: str


def logged_labels(logged: LoggedTest) -> np.ndarray | None:
    """The run's ``evaluation/predictions.csv`` as predicted labels, or None when the run
    has none, was trained against another test split, or its rows are not ``y``."""
    import io

    import numpy as np

    run_obj = get_run(logged.run_id)
    if run_obj is None or run_obj.data.tags.get("data.test.md5") != logged.digest:
        return None
    text = read_text_artifact(run_obj, PREDICTIONS_ARTIFACT)
    if not text:
        return None
    try:
        table = np.loadtxt(io.StringIO(text), delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
    except ValueError:
        return None
    if table.shape != (len(logged.y), 2) or not np.array_equal(table[:, 0], logged.y):
        return None
    log.info("predictions of run %s: as logged at evaluation", logged.run_id)
    return table[:, 1]
