"""pipeline.predict: `python -m pipeline.predict IMAGE ...` with the registered model."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipeline.predict import format_line, main, parse_args
from pipeline.testing.project import ROOT, reference_params, run, stage_env

PREDICT = [sys.executable, "-m", "pipeline.predict"]


@pytest.fixture
def workdir(tmp_path) -> Path:
    """An empty directory with params.yaml, as the CLI's working directory."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def cli_env(workdir: Path) -> dict[str, str]:
    return stage_env(PYTHONPATH=str(ROOT), MLFLOW_TRACKING_URI=f"sqlite:///{workdir}/mlflow.db")


def digit_png(path: Path) -> Path:
    im = Image.new("L", (300, 200), 255)
    ImageDraw.Draw(im).ellipse([110, 40, 190, 160], outline=0, width=12)
    im.save(path)
    return path


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " ERROR " in line]


def test_args_and_output_format():
    args = parse_args(["a.png", "b.jpg", "--json"])
    assert args.images == [Path("a.png"), Path("b.jpg")] and args.json
    assert args.model_uri is None
    probs = np.array([0.001] * 7 + [0.991] + [0.001] * 2)
    assert format_line(Path("a.png"), probs) == "a.png: digit 7 (p=0.991)"
    obj = json.loads(format_line(Path("a.png"), probs, as_json=True))
    assert obj["path"] == "a.png" and obj["digit"] == 7 and obj["p"] == pytest.approx(0.991)
    assert len(obj["probabilities"]) == 10


def test_a_bad_file_fails_the_whole_command(workdir):
    (workdir / "notanimage.txt").write_text("hello\n")
    good = digit_png(workdir / "good.png")
    for images in (["notanimage.txt"], [good.name, "notanimage.txt"]):
        proc = run([*PREDICT, *images], workdir, cli_env(workdir), check=False, timeout=120)
        assert proc.returncode == 1, proc.stderr
        assert proc.stdout == ""
        (line,) = error_lines(proc.stderr)
        assert line.endswith("notanimage.txt: not an image (cannot identify image file)")
        assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_no_registered_model(workdir):
    digit_png(workdir / "zero.png")
    proc = run([*PREDICT, "zero.png"], workdir, cli_env(workdir), check=False, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    (line,) = error_lines(proc.stderr)
    # the cause (an empty store) and the fix, not MLflow's "cannot load"
    assert "no lenet5-mnist@champion in" in line and "it has no runs yet: `make repro`" in line
    assert "Traceback" not in proc.stderr


@pytest.fixture
def mlflow_store(workdir, monkeypatch) -> str:
    """A SQLite store in workdir, for this process too; the global MLflow URI is restored."""
    from mlflow.tracking._tracking_service import utils

    uri = f"sqlite:///{workdir}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr(utils, "_tracking_uri", utils._tracking_uri)  # restored afterwards
    monkeypatch.chdir(workdir)  # artifacts go to workdir/mlartifacts
    return uri


@pytest.mark.slow
def test_predicts_with_the_champion(workdir, mlflow_store, capsys):
    """An untrained LeNet-5 registered as champion: one line per image, nothing else on stdout."""
    import mlflow

    from pipeline.core import tracking
    from pipeline.core.model import build_lenet5

    experiment_id = tracking.connect("lenet5-mnist")
    with tracking.active_run(experiment_id=experiment_id):
        model_uri = tracking.log_model(
            build_lenet5(reference_params().model), np.zeros((1, 28, 28), dtype=np.uint8)
        )
    version = mlflow.register_model(model_uri, "lenet5-mnist")
    mlflow.MlflowClient().set_registered_model_alias("lenet5-mnist", "champion", version.version)

    digit_png(workdir / "zero.png")
    shutil.copy(workdir / "zero.png", workdir / "again.png")
    env = cli_env(workdir)
    proc = run([*PREDICT, "zero.png", "again.png"], workdir, env, timeout=300)
    lines = proc.stdout.splitlines()
    assert len(lines) == 2, proc.stdout
    for name, line in zip(["zero.png", "again.png"], lines, strict=True):
        assert re.fullmatch(rf"{name}: digit \d \(p=[01]\.\d{{3}}\)", line), line
    assert lines[0][len("zero.png") :] == lines[1][len("again.png") :]  # same image, same answer

    # --json and --model-uri in this process (no new Python to start)
    capsys.readouterr()  # drop what logging the model printed
    main(["--json", "--model-uri", model_uri, "zero.png"])
    (obj,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert obj["path"] == "zero.png" and 0 <= obj["digit"] <= 9
    assert sum(obj["probabilities"]) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.slow
def test_a_bfloat16_model_without_bf16_hardware_is_one_line(workdir, mlflow_store, monkeypatch):
    """train.precision: mixed_bfloat16 computes in bf16 when served: on a CPU without it
    (here oneDNN capped at AVX2), TensorFlow's own error would come from deep inside."""
    from pipeline.core import tracking
    from pipeline.core.backend import tf
    from pipeline.core.errors import PipelineError
    from pipeline.core.model import build_lenet5

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU computes bfloat16: nothing to refuse")
    experiment_id = tracking.connect("lenet5-mnist")
    with tracking.active_run(experiment_id=experiment_id):
        tracking.log_params({"train.precision": "mixed_bfloat16"})
        model_uri = tracking.log_model(
            build_lenet5(reference_params().model, "mixed_bfloat16"),
            np.zeros((1, 28, 28), dtype=np.uint8),
        )
    digit_png(workdir / "zero.png")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    with pytest.raises(PipelineError) as e:
        main(["--model-uri", model_uri, "zero.png"])
    assert str(e.value).startswith(f"{model_uri} computes in bfloat16 (train.precision: mixed_")
    assert "\n" not in str(e.value)
