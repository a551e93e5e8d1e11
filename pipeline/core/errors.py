"""The errors a stage reports as one line and a non-zero exit (see :mod:`pipeline.core.cli`)."""


class PipelineError(Exception):
    """A failure the user can act on: its message is the whole story, no traceback needed."""


class DataError(PipelineError):
    """A data file is missing, corrupt, or not what it claims to be."""


class DownloadError(DataError):
    """No mirror produced a verified copy of a file."""


class TrackingError(PipelineError):
    """The MLflow tracking store is unreachable or refused a write."""
