"""Keras and TensorFlow, imported once, the way every stage wants them.

The pipeline imports them from here (``from pipeline.core.backend import keras, tf``;
tests/test_structure.py checks no other pipeline module imports them directly) because
Keras, when scikit-learn is installed (MLflow requires it), imports it at start-up for its
scikit-learn wrappers, and scikit-learn imports ``scipy.stats``: 1.7 s of every train
stage, sweep worker and predict on 2 cores, for wrappers the pipeline never uses. Hidden
while Keras imports, ``keras.wrappers`` keeps ``sklearn = None`` (as without
scikit-learn installed); anything imported later, MLflow included, gets the real
scikit-learn. The same holds for ``matplotlib.pyplot``, which Keras imports for an image
gallery helper (another 0.5 s; keras.visualization keeps ``plt = None``): the pipeline's
figures use matplotlib's Figure API, not pyplot (pipeline/core/plots.py).
"""

from __future__ import annotations

import sys

_HIDDEN = ("sklearn", "matplotlib.pyplot")  # optional imports of Keras the pipeline never uses

if "keras" not in sys.modules:
    hidden = [name for name in _HIDDEN if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # "import name" fails
    try:
        import keras
    finally:
        for name in hidden:
            del sys.modules[name]

import keras  # noqa: E402  (already imported above, or by the user's own code first)
import tensorflow as tf  # noqa: E402

__all__ = ["keras", "tf"]
