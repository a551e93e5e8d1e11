"""`python -m pipeline.tune`: a bad tune: section fails the command before any training."""

import sys

import pytest
import yaml

from pipeline.testing.project import ROOT, run, stage_env


def raw_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.mark.slow
def test_bad_tune_section_fails_the_command_in_one_line_before_training(tmp_path):
    raw = raw_params()
    raw["tune"]["space"] = {"train.learning_rate": {"low": 0.1, "high": 0.01}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    proc = run(
        [sys.executable, "-m", "pipeline.tune"],
        tmp_path,
        stage_env(PYTHONPATH=str(ROOT)),
        check=False,
    )
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "tune.space.train.learning_rate: low (0.1) > high" in errors[0]
    assert not (tmp_path / "optuna.db").exists()
