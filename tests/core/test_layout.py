"""The layout's paths: split files, and the main workspace seen from anywhere below it.

(tests/core/test_layout.py has the basic DVC temp copy case.)
"""

from pathlib import Path

from pipeline.core import layout
from pipeline.core.layout import project_root, split_file


def test_split_file():
    assert split_file("train") == Path("data/prepared/train.npz")
    assert split_file("val") == layout.PREPARED_DIR / "val.npz"
    assert split_file("test", Path("elsewhere")) == Path("elsewhere/test.npz")


def test_project_root_defaults_to_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert project_root() == tmp_path.resolve()


def test_project_root_from_inside_a_dvc_temp_copy(tmp_path, monkeypatch):
    copy = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "standalone" / "tmp1x2y"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    assert project_root() == (tmp_path / "repo").resolve()
    assert project_root(copy / "data" / "train") == (tmp_path / "repo").resolve()


def test_project_root_needs_the_whole_exps_path(tmp_path):
    for near_miss in (
        tmp_path / ".dvc" / "tmp" / "other" / "x",
        tmp_path / "tmp" / "exps" / "x",
        tmp_path / ".dvc" / "exps" / "x",
    ):
        assert project_root(near_miss) == near_miss.resolve()


def test_project_root_resolves_relative_paths(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    assert project_root(Path("..")) == tmp_path.resolve()
    assert project_root(Path("../.dvc/tmp/exps/t1")) == tmp_path.resolve()


def test_project_root_of_a_dvc_temp_copy_is_the_main_workspace(tmp_path):
    assert project_root(tmp_path) == tmp_path.resolve()
    copy = tmp_path / ".dvc" / "tmp" / "exps" / "tmpab12cd" / "sub"
    assert project_root(copy) == tmp_path.resolve()
