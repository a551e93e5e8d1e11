"""Names of MLflow tags that the tracking module writes and the pure rules read (no MLflow
here, so :mod:`pipeline.core.promotion` needs nothing from tracking)."""

MODEL_URI_TAG = "model.uri"  # set on a run once its model is logged
# The DVC hash of the feedback split a run trained on: register ranks together only the runs
# of the workspace's feedback split (pipeline.core.promotion.candidate_filter).
FEEDBACK_MD5_TAG = "data.feedback.md5"
