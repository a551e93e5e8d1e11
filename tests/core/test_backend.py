import subprocess
import sys

from pipeline.testing.project import ROOT

CHECK = """
import sys
from pipeline.core.backend import keras, tf
from keras.src.wrappers import fixes
assert "sklearn" not in sys.modules, "Keras imported scikit-learn"
from keras.src.visualization import plot_image_gallery
assert fixes.sklearn is None
assert "matplotlib.pyplot" not in sys.modules and plot_image_gallery.plt is None
import sklearn  # what MLflow or the user imports later is the real one
assert sklearn.__version__ and sys.modules["sklearn"] is sklearn
import matplotlib.pyplot as plt
assert sys.modules["matplotlib.pyplot"] is plt and plt.figure
assert keras.Sequential and tf.constant(1).numpy() == 1
print("ok")
"""


def test_keras_imports_without_scikit_learn_or_pyplot_and_leaves_them_importable():
    proc = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
