"""pipeline.report and the CI around it: DVC's JSON to Markdown (pure), the workflows
(actionlint; every step a Makefile target that this file runs), and the report of a real
repository with two commits of small runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline import report
from pipeline.testing.project import ROOT, VENV_BIN, clone_of, copy_project, run, stage_env

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
GITLAB = ROOT / ".gitlab-ci.yml"
# Every Makefile target a CI step runs, and the test here that runs it.
TARGET_TESTS = {
    "setup": "test_targets_run_here (make -n); every test runs in the venv it built",
    "system-deps": "test_targets_run_here; .ci/run runs it before make test",
    "test": "the whole suite (.ci/run runs make test)",
    "mnist-mirror": "test_mnist_mirror_target",
    "smoke": "test_report_on_two_commits",
    "report": "test_report_on_two_commits",
    "report-summary": "test_summary_and_pr_comment_targets",
    "pr-comment": "test_summary_and_pr_comment_targets",
    "ci-repro": "test_targets_run_here",
    "ci-push": "test_targets_run_here",
    "ci-register": "test_targets_run_here",
    "monitor": "test_targets_run_here (make -n); tests/monitor runs its command",
    "ci-pull": "test_targets_run_here",
    "ci-retrain": "test_targets_run_here (make -n); the retrain module's tests run it",
    "retrain-pr": "test_retrain_pr_target",
}


def make(*args: str, cwd: Path = ROOT, env: dict | None = None, check: bool = True):
    """``make`` with the venv's stamp taken as up to date, so that no test reinstalls."""
    return run(["make", "-s", "-o", ".venv/.installed", *args], cwd, env or stage_env(), check)


# ------------------------------------------------------------------------ the workflows


def ci_commands() -> list[tuple[str, str]]:
    """(file, command) of every ``run:`` step and GitLab ``script:`` line."""
    found = []
    for path in WORKFLOWS:
        for job in yaml.safe_load(path.read_text())["jobs"].values():
            found += [(path.name, step["run"].strip()) for step in job["steps"] if "run" in step]
    for job in yaml.safe_load(GITLAB.read_text()).values():
        if isinstance(job, dict) and "script" in job:
            found += [(GITLAB.name, line.strip()) for line in job["script"]]
    return found


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))


def test_actionlint_passes_on_every_workflow():
    assert {p.name for p in WORKFLOWS} == {"pr.yml", "main.yml", "retrain.yml"}
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    assert (VENV_BIN / "shellcheck").exists()  # so actionlint checks the run: scripts too
    proc = subprocess.run(
        [
            str(VENV_BIN / "actionlint"),
            "-no-color",
            "-shellcheck",
            str(VENV_BIN / "shellcheck"),
            *map(str, WORKFLOWS),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_ci_step_is_a_tested_makefile_target():
    targets = makefile_targets()
    used = set()
    for file, command in ci_commands():
        match = re.fullmatch(r"make ([\w-]+)", command)
        assert match, f"{file}: {command!r} is not `make <target>`"
        assert match.group(1) in targets, f"{file}: no Makefile target {match.group(1)}"
        used.add(match.group(1))
    assert used == set(TARGET_TESTS)
    tests = {name for name in globals() if name.startswith("test_")}
    for target, test in TARGET_TESTS.items():
        named = re.findall(r"test_\w+", test)
        assert set(named) <= tests, f"{target}: {named} not in {Path(__file__).name}"


def test_workflows_hold_no_secret_in_a_command_and_minimal_permissions():
    for path in WORKFLOWS:
        flow = yaml.safe_load(path.read_text())
        assert flow["permissions"] == {"contents": "read"}, path.name
        for job in flow["jobs"].values():
            # Only the scheduled retrain pushes (its retrain/ branch for the pull request).
            pushes = {("contents", "write")} if path.name == "retrain.yml" else set()
            assert set(job.get("permissions", {}).items()) <= {
                ("contents", "read"),
                ("pull-requests", "write"),
                *pushes,
            }
            for key, value in job.get("env", {}).items():
                if key.startswith("MLFLOW_"):
                    assert value == f"${{{{ secrets.{key} }}}}", (path.name, key)
            for step in job["steps"]:
                assert "secrets." not in step.get("run", ""), step
                if "uses" in step:  # pinned to a full commit SHA
                    assert re.fullmatch(r"[\w-]+/[\w-]+@[0-9a-f]{40}", step["uses"]), step
    main = yaml.safe_load((ROOT / ".github/workflows/main.yml").read_text())
    assert set(main["jobs"]["reproduce"]["env"]) == {
        "MLFLOW_TRACKING_URI",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
    }


def test_targets_run_here():
    """The main-branch targets need the team server and remote: what they would run."""
    out = make("-n", "ci-repro", "ci-push", "ci-register", "setup").stdout
    assert "/dvc pull --allow-missing" in out and "/dvc repro" in out
    assert "/dvc push" in out and "/python -m pipeline.register" in out
    out = make("-n", "ci-pull", "monitor", "ci-retrain").stdout
    assert "/dvc pull --allow-missing" in out and "/python -m pipeline.monitor" in out
    assert "/python -m pipeline.retrain --if-needed" in out


def test_retrain_pr_target(tmp_path):
    """Nothing retrained: nothing proposed. Retrained: a retrain/ branch with params.yaml,
    dvc.lock and the outputs committed and pushed, then dvc push and gh pr create (here
    stand-ins that record their arguments: no DVC remote or GitHub to reach)."""
    project = copy_project(tmp_path / "p")
    calls, fake = tmp_path / "calls", tmp_path / "bin"
    fake.mkdir()
    for tool in ("gh", "dvc"):
        (fake / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\n')
        (fake / tool).chmod(0o755)
    env = stage_env(PATH=f"{fake}{os.pathsep}{stage_env()['PATH']}")
    run(["git", "init", "-q", "--bare", str(tmp_path / "origin.git")], project)
    run(["git", "remote", "add", "origin", str(tmp_path / "origin.git")], project)
    out = make("retrain-pr", f"BIN={fake}", cwd=project, env=env).stdout
    assert "nothing to propose" in out and not calls.exists()
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("until: null", "until: '2026-12-06T10:00:00Z'"))
    make("retrain-pr", f"BIN={fake}", cwd=project, env=env)
    branch = run(["git", "branch", "--show-current"], project).stdout.strip()
    assert branch.startswith("retrain/")
    shown = run(["git", "show", "--stat", "--format=%s", "HEAD"], project).stdout
    assert "Retrain on the labels up to" in shown and "params.yaml" in shown
    assert run(["git", "ls-remote", "--heads", "origin", branch], project).stdout.strip()
    assert calls.read_text().splitlines() == [
        "dvc push", f"gh pr create --head {branch} --title Retrain on production labels "
        "--body-file report/report.md"]  # fmt: skip
    # system-deps for real: .ci/run ran it before the suite, so it has nothing to install.
    assert "installing" not in make("system-deps").stdout


def test_summary_and_pr_comment_targets(tmp_path):
    """report-summary appends the report to the job summary; pr-comment asks gh to edit
    its last comment (or create the first), with a fake gh that records its arguments."""
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.md").write_text("# Pipeline report\n")
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    fake = tmp_path / "bin"
    fake.mkdir()
    calls = tmp_path / "gh-calls"
    (fake / "gh").write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {calls}\n')
    (fake / "gh").chmod(0o755)
    env = stage_env(GITHUB_STEP_SUMMARY=str(summary), PR_NUMBER="7")
    env["PATH"] = f"{fake}{os.pathsep}{env['PATH']}"
    make("report-summary", f"REPORT_DIR={out}", env=env)
    assert summary.read_text() == "earlier step\n# Pipeline report\n"
    for _ in range(2):  # every push: the same edit of one comment
        make("pr-comment", f"REPORT_DIR={out}", env=env)
    expected = f"pr comment 7 --edit-last --create-if-none --body-file {out}/report.md"
    assert calls.read_text().splitlines() == [expected, expected]
    no_pr = make("pr-comment", f"REPORT_DIR={out}", env={**env, "PR_NUMBER": ""}, check=False)
    assert no_pr.returncode != 0


@pytest.mark.slow
def test_mnist_mirror_target(tmp_path, mnist_dir):
    project = copy_project(tmp_path / "p")
    (project / ".venv").symlink_to(VENV_BIN.parent)
    make("mnist-mirror", f"MNIST_DIR={tmp_path / 'mirror'}", cwd=project)
    assert sorted(p.name for p in (tmp_path / "mirror").iterdir()) == sorted(
        p.name for p in mnist_dir.glob("*.gz")
    )


# ------------------------------------------------------------------ DVC's JSON -> Markdown


METRICS_DIFF = {
    "data/eval/metrics.json": {
        "robust.noise_accuracy": {"old": 0.26, "new": 0.4685, "diff": 0.20850000000000002},
        "test_loss": {"old": 2.17, "new": 2.0, "diff": -0.17},
        "test_accuracy": {"old": 0.3056, "new": 0.49, "diff": 0.1844},
    },
    "data/train/metrics.json": {"train_seconds": {"old": None, "new": 8.1, "diff": None}},
}


def test_metrics_rows_results_first_then_robustness():
    rows = report.metrics_rows(METRICS_DIFF)
    assert [r["metric"] for r in rows] == [
        "test_accuracy",
        "test_loss",
        "train_seconds",
        "robust.noise_accuracy",
    ]
    assert rows[0] == {
        "file": "data/eval/metrics.json",
        "metric": "test_accuracy",
        "old": 0.3056,
        "new": 0.49,
        "diff": 0.1844,
    }
    assert report.has_base(rows)
    assert not report.has_base([{**r, "old": None} for r in rows])


def test_params_rows_and_plot_links(tmp_path):
    diff = {"params.yaml": {"train.epochs": {"old": 2, "new": 1}}}
    assert report.params_rows(diff) == [
        {"file": "params.yaml", "param": "train.epochs", "old": 2, "new": 1}
    ]
    shown = {
        "data": {
            "data/train/learning_curves.png": [
                {"revisions": ["workspace"], "url": str(tmp_path / "plots/w.png")},
                {"revisions": ["main"], "url": str(tmp_path / "plots/m.png")},
            ]
        },
        "errors": [{"name": "data/eval/confusion.png", "rev": "main"}],
    }
    assert report.plot_links(shown, "main", tmp_path) == [
        {"plot": "data/train/learning_curves.png", "base": "plots/m.png",
         "workspace": "plots/w.png"},
        {"plot": "data/eval/confusion.png", "base": None, "workspace": None},
    ]  # fmt: skip


def test_render_tables_and_missing_sections():
    doc = {
        "base": "main",
        "params": report.params_rows({"params.yaml": {"train.epochs": {"old": 2, "new": 1}}}),
        "metrics": report.metrics_rows(METRICS_DIFF),
        "paired": {"missing": "no base model: run abc is not in the store"},
        "champion": {"missing": "run def is not in the store"},
        "plots": [{"plot": "data/eval/confusion.png", "base": None, "workspace": "plots/w.png"}],
    }
    text = report.render(doc)
    assert "| `train.epochs` | 2 | 1 |" in text
    assert "| `test_accuracy` | 0.3056 | 0.49 | +0.1844 |" in text
    assert "| `train_seconds` | — | 8.1 | — |" in text
    assert "| `robust.noise_accuracy` | 0.26 | 0.4685 | +0.2085 |" in text
    assert "no base model: run abc is not in the store" in text
    assert "| `data/eval/confusion.png` | — | ![workspace](plots/w.png) |" in text


def test_run_url_only_for_servers_and_without_credentials():
    assert report.run_url("sqlite:///x/mlflow.db", "1", "abc") is None
    assert (
        report.run_url("https://ci:secret@mlflow.example/", "3", "abc")
        == "https://mlflow.example/#/experiments/3/runs/abc"
    )


def test_base_without_metrics_is_one_line_and_exit_0(tmp_path):
    repo = tmp_path / "fresh"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@e"]
    run(["git", "init", "-q", "-b", "main"], repo)
    cmd = [sys.executable, "-m", "pipeline.report", "--out", str(tmp_path / "out")]
    proc = run(cmd, repo)  # no commit at all: no revision main
    assert "no revision main: a new repository? nothing to compare" in proc.stderr
    for rel in ("dvc.yaml", "params.yaml"):
        (repo / rel).write_text((ROOT / rel).read_text())
    run(["dvc", "init", "-q"], repo)
    run(["git", "add", "-A"], repo)
    run([*git, "commit", "-qm", "before any repro"], repo)
    for rel in ("data/eval/metrics.json", "data/train/metrics.json"):  # the workspace has some
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text((ROOT / rel).read_text())
    proc = run(cmd, repo)
    line = "no metrics at main: a new repository? nothing to compare"
    assert [ln for ln in proc.stderr.splitlines() if "nothing to compare" in ln][0].endswith(line)
    assert (tmp_path / "out" / "report.md").read_text() == line + "\n"


# --------------------------------------------------------------- a real two-commit report


def predicted(tracking_uri: str, run_id: str, x: np.ndarray) -> np.ndarray:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    uri = mlflow.MlflowClient().get_run(run_id).data.tags["model.uri"]
    return np.asarray(mlflow.pyfunc.load_model(uri).predict(x)).argmax(axis=1)


@pytest.mark.slow
def test_report_on_two_commits(smoke_project, tmp_path):
    """The smoke project committed as main, `make smoke` (1 epoch instead of 2) committed
    on a branch, then `make report`: DVC's numbers exactly, both plots, the paired counts
    of both models scored here."""
    project = clone_of(smoke_project, tmp_path / "p")
    (project / ".venv").symlink_to(VENV_BIN.parent)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@e"]
    run(["git", "add", "-A"], project)
    run([*git, "commit", "-qm", "base run"], project)
    assert run(["git", "branch", "--show-current"], project).stdout.strip() == "main"
    run(["git", "checkout", "-qb", "change"], project)
    make("smoke", cwd=project)
    run(["git", "add", "-A"], project)
    run([*git, "commit", "-qm", "smoke run"], project)

    started = time.monotonic()
    make("report", cwd=project)
    seconds = time.monotonic() - started
    print(f"make report: {seconds:.1f} s")  # noqa: T201  (the figure README quotes)

    out = project / "report"
    doc = json.loads((out / "report.json").read_text())
    metrics = json.loads(run(["dvc", "metrics", "diff", "--json", "--all", "main"], project).stdout)
    params = json.loads(run(["dvc", "params", "diff", "--json", "main"], project).stdout)
    assert doc["metrics"] == report.metrics_rows(metrics)
    assert doc["params"] == report.params_rows(params)
    assert {(p["param"], p["old"], p["new"]) for p in doc["params"]} == {("train.epochs", 2, 1)}
    text = (out / "report.md").read_text()
    assert text == report.render(doc)
    for row in doc["metrics"]:
        assert f"| `{row['metric']}` | {row['old']} | {row['new']} |" in text
    for plot in doc["plots"]:
        for rev in ("base", "workspace"):
            assert (out / plot[rev]).stat().st_size > 1000
            assert f"]({plot[rev]})" in text

    x = np.load(project / "data/prepared/test.npz")["x"]
    y = np.load(project / "data/prepared/test.npz")["y"]
    uri = f"sqlite:///{project / 'mlflow.db'}"
    base_run = json.loads(run(["git", "show", "main:data/train/run.json"], project).stdout)
    new_run = json.loads((project / "data/train/run.json").read_text())
    base_ok = predicted(uri, base_run["run_id"], x) == y
    new_ok = predicted(uri, new_run["run_id"], x) == y
    paired = doc["paired"]
    assert (paired["base_only"], paired["workspace_only"]) == (
        int((base_ok & ~new_ok).sum()),
        int((~base_ok & new_ok).sum()),
    )
    assert paired["images"] == len(y) and paired["run"] == new_run["run_id"]
    assert doc["champion"]["decision"] in ("promoted", "challenger", "kept", "already champion")
    assert doc["champion"]["version"]


def test_setup_passes_pips_configuration_on_to_uv(tmp_path):
    """uv reads no pip.conf: make setup hands it pip's indexes, find-links and
    constraints (.ci/uv_args.py), each once, from the files and the environment."""
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = https://mirror.example/simple\n"
                    "extra-index-url = file:///a/simple file:///b/simple\n"
                    "constraint = /etc/constraints.txt\ntimeout = 60\n")  # fmt: skip
    env = {**os.environ, "PIP_CONFIG_FILE": str(conf), "PIP_FIND_LINKS": "/wheels"}
    out = subprocess.run([sys.executable, str(ROOT / ".ci/uv_args.py")], env=env,
                         capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    pairs = list(zip(out[::2], out[1::2], strict=True))
    expected = [("--index-url", "https://mirror.example/simple"),
                ("--extra-index-url", "file:///a/simple"),
                ("--extra-index-url", "file:///b/simple"),
                ("--constraint", "/etc/constraints.txt"), ("--find-links", "/wheels")]  # fmt: skip
    for pair in expected:
        assert pairs.count(pair) == 1, (pair, out)
    assert "60" not in out  # pip's other settings are not uv's
