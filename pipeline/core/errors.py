"""The errors a stage reports as one line and a non-zero exit (see :mod:`pipeline.core.cli`),
and :func:`first_line`, the one way a foreign exception becomes part of such a line."""

from __future__ import annotations

import re


class PipelineError(Exception):
    """A failure the user can act on: its message is the whole story, no traceback needed."""


class ParamsError(PipelineError, ValueError):
    """params.yaml is missing, malformed, or holds an invalid value."""


class DataError(PipelineError):
    """A data file is missing, corrupt, or not what it claims to be."""


class DownloadError(DataError):
    """No mirror produced a verified copy of a file."""


class TrackingError(PipelineError):
    """The MLflow tracking store is unreachable or refused a write."""


def redact(uri: str) -> str:
    """Hide the credentials of a URI: whatever comes between ``://`` and ``@`` becomes
    ``***`` (``http://***@host``)."""
    return re.sub(r"(?<=://)[^/@\s]+@", "***@", uri)


def first_line(e: BaseException | str, limit: int = 300) -> str:
    """The gist of an error: its first non-empty line (else its type), credentials hidden,
    at most ``limit`` characters."""
    text = str(e).strip()
    line = text.splitlines()[0].strip() if text else type(e).__name__
    return redact(line)[:limit]
