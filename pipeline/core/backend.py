"""Keras and TensorFlow, imported once, the way every stage wants them.

The pipeline imports them from here (``from pipeline.core.backend import keras, tf``;
tests/test_structure.py checks no other pipeline module imports them directly) because
Keras, when scikit-learn is installed (MLflow requires it), imports it at start-up for its
scikit-learn wrappers, and scikit-learn imports ``scipy.stats``: 1.7 s of every train
stage, sweep worker and predict on 2 cores, for wrappers the pipeline never uses. Hidden
while Keras imports, ``keras.wrappers`` keeps ``sklearn = None`` (as without
scikit-learn installed); anything imported later, MLflow included, gets the real
scikit-learn.
"""

from __future__ import annotations

import sys

if "keras" not in sys.modules and "sklearn" not in sys.modules:
    sys.modules["sklearn"] = None  # type: ignore[assignment]  # "import sklearn" fails
    try:
        import keras
    finally:
        del sys.modules["sklearn"]

import keras  # noqa: E402  (already imported above, or by the user's own code first)
import tensorflow as tf  # noqa: E402

__all__ = ["keras", "tf"]
