import subprocess
import sys

from pipeline.testing.project import ROOT

CHECK = """
import sys
from pipeline.core.backend import keras, tf
from keras.src.wrappers import fixes
assert "sklearn" not in sys.modules, "Keras imported scikit-learn"
assert fixes.sklearn is None
import sklearn  # what MLflow or the user imports later is the real one
assert sklearn.__version__ and sys.modules["sklearn"] is sklearn
assert keras.Sequential and tf.constant(1).numpy() == 1
print("ok")
"""


def test_keras_imports_without_scikit_learn_and_leaves_it_importable():
    proc = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
