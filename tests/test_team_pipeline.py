"""Team setup: a stage against a tracking server that is down. The whole pipeline over
HTTP, with credentials in the URI, is tests/test_tracking_server.py's (one repro there
against the real team server serves both)."""

import sys

import pytest

from pipeline.testing.project import clone_of, free_port, run, stage_env

pytestmark = pytest.mark.slow


def test_register_against_a_down_server_fails_with_one_line(smoke_project, tmp_path):
    project = clone_of(smoke_project, tmp_path / "project")
    port = free_port()
    env = stage_env(MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}")
    proc = run([sys.executable, "-m", "pipeline.register"], project, env, check=False)
    assert proc.returncode == 1
    errors = [ln for ln in proc.stderr.splitlines() if " ERROR " in ln]
    assert errors == [e for e in errors if f"127.0.0.1:{port} is unreachable" in e]
    assert len(errors) == 1
