"""Classify digit images with the registered model: ``python -m pipeline.predict IMAGE ...``.

Each image (PNG, JPEG, ...: a scan, a photo, a drawing) is normalized the way MNIST was
made (:mod:`pipeline.core.imaging`), then the model registered in MLflow as
``register.model_name`` with alias ``register.alias`` (params.yaml) classifies them all in
one batch, with the NumPy forward pass the scoring service answers with (no TensorFlow to
start: about 2 s instead of 8; Keras, through MLflow's pyfunc, for a model it does not
implement, such as a bfloat16 one). One line per image on stdout::

    scan.png: digit 7 (p=0.998)

``--json`` prints one JSON object per line instead (path, digit, p, probabilities). All
images are decoded before the model is loaded: one bad file fails the whole command with
one ``error:`` line naming it, and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.core import imaging, tracking
from pipeline.core.cli import run
from pipeline.core.errors import PipelineError
from pipeline.core.hardware import bfloat16_problem
from pipeline.core.params import load_params

log = logging.getLogger(__name__)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.predict",
        description="Classify handwritten digit images with the registered LeNet-5 model.",
    )
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="PNG/JPEG files")
    parser.add_argument(
        "--model-uri",
        help="MLflow model URI (default: models:/<register.model_name>@<register.alias> "
        "from params.yaml)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per line")
    return parser.parse_args(argv)


def format_line(path: Path, probs: np.ndarray, as_json: bool = False) -> str:
    """``path: digit 7 (p=0.998)``, or the same as a JSON object."""
    digit = int(np.argmax(probs))
    p = float(probs[digit])
    if as_json:
        return json.dumps(
            {
                "path": str(path),
                "digit": digit,
                "p": round(p, 6),
                "probabilities": [round(float(v), 6) for v in probs],
            }
        )
    return f"{path}: digit {digit} (p={p:.3f})"


def check_hardware(model_uri: str) -> None:
    """A model trained with ``train.precision: mixed_bfloat16`` computes in bfloat16: where
    that is not in hardware, one line here instead of an error deep in TensorFlow."""
    trained = tracking.get_run(tracking.model_info(model_uri).run_id)
    if trained and trained.data.params.get("train.precision") == "mixed_bfloat16":
        from pipeline.core.backend import tf

        if why := bfloat16_problem(gpus=len(tf.config.list_physical_devices("GPU"))):
            raise PipelineError(
                f"{model_uri} computes in bfloat16 (train.precision: mixed_bfloat16), and "
                f"{why}: predict with it where bf16 is in hardware"
            )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    params = load_params()
    model_uri = args.model_uri or f"models:/{params.register.model_name}@{params.register.alias}"
    images = imaging.prepare(args.images)  # every file decoded before MLflow is touched
    tracking.use_store()  # reads only: creates no experiment
    name, alias = params.register.model_name, params.register.alias
    if not args.model_uri and tracking.alias_target(name, alias) is None:
        raise PipelineError(tracking.why_no_champion(name, alias, params.tracking.experiment))
    check_hardware(model_uri)
    probs = tracking.predict_probabilities(model_uri, images)  # stdout: the results alone
    if probs.shape != (len(images), 10):
        raise PipelineError(f"{model_uri}: expected (N, 10) probabilities, got {probs.shape}")
    for path, row in zip(args.images, probs, strict=True):
        sys.stdout.write(format_line(path, row, args.json) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    run(main)
