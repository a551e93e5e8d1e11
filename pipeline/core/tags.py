"""Names of MLflow tags that the tracking module writes and the pure rules read (no MLflow
here, so :mod:`pipeline.core.promotion` needs nothing from tracking)."""

MODEL_URI_TAG = "model.uri"  # set on a run once its model is logged
