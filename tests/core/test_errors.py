"""One-line errors: credentials hidden, the first line only, the type when there is no text."""

import pytest

from pipeline.core.errors import (
    DataError,
    DownloadError,
    ParamsError,
    PipelineError,
    TrackingError,
    first_line,
    redact,
)


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("http://user:pw@host:5000/x", "http://***@host:5000/x"),
        ("postgresql://me@db/mlflow", "postgresql://***@db/mlflow"),
        ("https://host/path@v1", "https://host/path@v1"),  # an @ after the host is no login
        ("sqlite:///mlflow.db", "sqlite:///mlflow.db"),
        ("no uri at all", "no uri at all"),
    ],
)
def test_redact_hides_credentials_only(uri, expected):
    assert redact(uri) == expected


def test_redact_hides_every_uri_in_a_message():
    text = "a http://u:p@h1/x and b https://v:q@h2"
    assert redact(text) == "a http://***@h1/x and b https://***@h2"


def test_first_line_of_an_empty_message_is_the_type_name():
    assert first_line(KeyError()) == "KeyError"
    assert first_line(RuntimeError("   \n ")) == "RuntimeError"
    assert first_line("") == "str"


def test_first_line_skips_leading_blank_lines_and_drops_the_rest():
    assert first_line(ValueError("\n\n  boom\ndetails\nmore")) == "boom"
    assert first_line("plain text\nsecond") == "plain text"


def test_first_line_is_cut_at_the_limit_after_redacting():
    e = OSError("connect http://alice:secret@db:5432 " + "x" * 500)
    line = first_line(e)
    assert len(line) == 300
    assert "secret" not in line and "alice" not in line
    assert line.startswith("connect http://***@db:5432 ")
    assert first_line(e, limit=10) == "connect ht"


def test_error_hierarchy():
    assert issubclass(ParamsError, PipelineError)
    assert issubclass(ParamsError, ValueError)  # callers catching ValueError still work
    assert isinstance(ParamsError("x"), ValueError)
    assert issubclass(DownloadError, DataError) and issubclass(DataError, PipelineError)
    assert issubclass(TrackingError, PipelineError)
    assert not issubclass(PipelineError, ValueError)
