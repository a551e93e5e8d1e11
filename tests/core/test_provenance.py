"""``git.dirty`` in a real temporary repository: code and config count, params and data not.

(tests/core/test_provenance.py has run_name and dvc_tags.)
"""

import subprocess

import pytest

from pipeline.core.provenance import dvc_tags, git_tags, run_name

GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]


def _git(repo, *args):
    return subprocess.run(
        [*GIT, *args], cwd=repo, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A committed project-like tree: code, dvc.yaml, params.yaml, dvc.lock and data/."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        monkeypatch.delenv(name, raising=False)
    root = tmp_path / "repo"
    files = {
        "pipeline/x.py": "x = 1\n",
        "dvc.yaml": "stages: {}\n",
        "params.yaml": "train: {epochs: 1}\n",
        "dvc.lock": "schema: '2.0'\n",
        "data/train/metrics.json": "{}\n",
        ".gitignore": "__pycache__/\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "init")
    return root


def test_clean_checkout(repo):
    assert git_tags(repo) == {"git.commit": _git(repo, "rev-parse", "HEAD"), "git.dirty": "false"}


def test_params_lock_and_data_changes_are_not_dirty(repo):
    (repo / "params.yaml").write_text("train: {epochs: 2}\n")
    (repo / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    (repo / "data/train/metrics.json").write_text('{"acc": 1}\n')
    (repo / "data/train/metrics.json").unlink()  # DVC deletes outputs before a stage runs
    (repo / "data/new.csv").write_text("a\n")  # untracked, outside pipeline/
    (repo / "notes.txt").write_text("untracked, outside pipeline/\n")
    assert git_tags(repo)["git.dirty"] == "false"


@pytest.mark.parametrize("path", ["pipeline/x.py", "dvc.yaml"])
def test_an_edited_tracked_file_is_dirty(repo, path):
    (repo / path).write_text((repo / path).read_text() + "# edited\n")
    assert git_tags(repo)["git.dirty"] == "true"


def test_a_deleted_tracked_file_is_dirty(repo):
    (repo / "pipeline/x.py").unlink()
    assert git_tags(repo)["git.dirty"] == "true"


def test_a_staged_change_is_dirty(repo):
    (repo / "dvc.yaml").write_text("stages: {a: {cmd: x}}\n")
    _git(repo, "add", "dvc.yaml")
    assert git_tags(repo)["git.dirty"] == "true"


def test_a_new_file_under_pipeline_is_dirty(repo):
    (repo / "pipeline/sub").mkdir()
    (repo / "pipeline/sub/new.py").write_text("y = 2\n")
    assert git_tags(repo)["git.dirty"] == "true"


def test_ignored_files_under_pipeline_are_not_dirty(repo):
    (repo / "pipeline/__pycache__").mkdir()
    (repo / "pipeline/__pycache__/x.cpython-313.pyc").write_bytes(b"\0")
    assert git_tags(repo)["git.dirty"] == "false"


def test_the_cwd_is_used_by_default(repo, monkeypatch):
    monkeypatch.chdir(repo)
    assert git_tags()["git.dirty"] == "false"


def test_outside_a_git_repo(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    (tmp_path / "plain").mkdir()
    assert git_tags(tmp_path / "plain") == {"git.commit": "unknown"}


def test_no_git_binary(repo, monkeypatch):
    monkeypatch.setenv("PATH", str(repo / "nowhere"))
    assert git_tags(repo) == {"git.commit": "unknown"}


def test_dvc_tags_ignore_empty_values():
    assert dvc_tags({"DVC_EXP_NAME": "", "DVC_EXP_BASELINE_REV": "abc"}) == {
        "dvc.baseline_rev": "abc"
    }
    assert dvc_tags({"OTHER": "x"}) == {}


def test_run_name_without_an_experiment_is_a_utc_stamp():
    name = run_name({"DVC_EXP_NAME": ""})
    prefix, date, time = name.split("-")
    assert prefix == "workspace" and len(date) == 8 and len(time) == 6
    assert (date + time).isdigit()


def test_run_names_and_dvc_tags():
    assert run_name({"DVC_EXP_NAME": "adam-lr3"}) == "adam-lr3"
    assert run_name({}).startswith("workspace-")
    assert dvc_tags({"DVC_EXP_NAME": "x", "DVC_EXP_BASELINE_REV": "abc"}) == {
        "dvc.exp_name": "x",
        "dvc.baseline_rev": "abc",
    }
    assert dvc_tags({}) == {}
