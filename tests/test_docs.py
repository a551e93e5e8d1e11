"""The docs cannot drift from the code: every test they name exists, and every relative
link and ``#anchor`` in them resolves (GitHub's heading slugs)."""

from __future__ import annotations

import ast
import os
import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"


def doc_files(root: Path = ROOT) -> list[Path]:
    """README, the figures' homes, data/README.md and every guide under docs/."""
    named = [root / n for n in ("README.md", "RELIABILITY.md", "BENCHMARKS.md", "data/README.md")]
    return [p for p in named if p.exists()] + sorted((root / "docs").rglob("*.md"))


def prose(text: str) -> str:
    """The Markdown without its fenced code blocks (links and names there are examples)."""
    return re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.MULTILINE | re.DOTALL)


# ------------------------------------------------------------------------ named tests

_CODE = re.compile(r"`([^`\n]+)`")
_FILE = re.compile(r"((?:[\w.-]+/)*test_\w+\.py)(?:::(test_\w+))?")
_BARE = re.compile(r"(?<![\w./:-])(test_\w+)(?![\w.])")


def defined_tests(tests: Path = TESTS) -> dict[Path, set[str]]:
    """Every test module under tests/ and the test functions it defines."""
    found = {}
    for path in tests.rglob("test_*.py"):
        tree = ast.parse(path.read_text())
        found[path] = {
            n.name
            for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name.startswith("test_")
        }
    return found


def metric_names(root: Path = ROOT) -> set[str]:
    """Names that look like tests but are metrics (``test_accuracy``): the metrics files'
    keys."""
    import json

    names: set[str] = set()
    for path in (root / "data/eval/metrics.json", root / "data/train/metrics.json"):
        if path.exists():
            names |= set(json.loads(path.read_text()))
    return names | {"test_accuracy_ci95_high", "test_accuracy_ci95_low"}


def missing_tests(text: str, tests: dict[Path, set[str]], not_tests: set[str]) -> list[str]:
    """The test modules and functions named in code spans of ``text`` that do not exist.

    ``core/test_params.py::test_x`` (a path under tests/, possibly shortened to its end),
    ``test_x.py`` and a bare ``test_x`` (defined in any test module)."""
    every = set().union(*tests.values()) if tests else set()
    problems = []
    for span in _CODE.findall(prose(text)):
        for file, func in _FILE.findall(span):
            rel = file.removeprefix("tests/")
            modules = [p for p in tests if p.as_posix().endswith("/" + rel)]
            if not modules:
                problems.append(f"{file}: no such test module")
            elif func and not any(func in tests[m] for m in modules):
                problems.append(f"{file}::{func}: no such test")
        for name in _BARE.findall(_FILE.sub("", span)):
            if name not in every and name not in not_tests:
                problems.append(f"{name}: no such test")
    return problems


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_test_named_in_the_docs_exists(doc):
    assert missing_tests(doc.read_text(), defined_tests(), metric_names()) == []


def test_a_renamed_or_missing_test_is_reported():
    tests = {TESTS / "core/test_params.py": {"test_a"}, TESTS / "test_b.py": {"test_b"}}
    text = (
        "`core/test_params.py::test_a` `test_b` `test_params.py::test_gone` `test_old_name`"
        " `test_nope.py` `test_accuracy`\n```\n`test_in_a_code_block`\n```\n"
    )
    assert missing_tests(text, tests, {"test_accuracy"}) == [
        "test_params.py::test_gone: no such test",
        "test_old_name: no such test",
        "test_nope.py: no such test module",
    ]


# ------------------------------------------------------------------ links and anchors

_LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]\n]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: markup dropped, lower case, punctuation removed
    (letters, digits, ``-`` and ``_`` stay), spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = text.replace("`", "").replace("*", "").strip().lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in ("L", "N"))
    return kept.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor, with GitHub's -1, -2 suffixes for repeated ones, and the
    explicit ``<a id="…">`` / ``<a name="…">`` targets."""
    seen: dict[str, int] = {}
    out = set()
    for heading in _HEADING.findall(prose(text)):
        base = slug(heading)
        n = seen.get(base, 0)
        out.add(base if n == 0 else f"{base}-{n}")
        seen[base] = n + 1
    out |= set(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", text))
    return out


def broken_links(doc: Path, root: Path = ROOT) -> list[str]:
    """Relative links of ``doc`` whose file or ``#anchor`` does not exist."""
    problems = []
    for target in (a or b for a, b in _LINK.findall(prose(doc.read_text()))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...: not ours
            continue
        path_part, _, anchor = target.partition("#")
        dest = (doc.parent / path_part).resolve() if path_part else doc
        if not dest.exists():
            problems.append(f"{target}: no such file")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
            problems.append(f"{target}: no heading with that anchor in {dest.name}")
    return problems


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_and_anchor_resolves(doc):
    assert broken_links(doc) == []


def test_a_broken_link_or_anchor_is_reported(tmp_path):
    (tmp_path / "guide.md").write_text("# A guide\n\n## The `make test` target: how?\n")
    doc = tmp_path / "README.md"
    doc.write_text(
        "[ok](guide.md) [ok](guide.md#the-make-test-target-how) [ok](#top) "
        "[gone](missing.md) [bad](guide.md#no-such) [web](https://example.org)\n# Top\n"
    )
    assert broken_links(doc, tmp_path) == [
        "missing.md: no such file",
        "guide.md#no-such: no heading with that anchor in guide.md",
    ]


# ------------------------------------------------- commands, the diagram, shell blocks

_FENCE = re.compile(r"^```[a-z]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
_MAKE = re.compile(r"(?:^|[ \t;&|(])make[ \t]+([a-z][\w-]*)", re.MULTILINE)
_PYTHON_M = re.compile(r"python -m (pipeline(?:\.\w+)+)([^#\n]*)")


def code_text(text: str) -> str:
    """Every fenced block's lines, and every inline code span."""
    return "\n".join(_FENCE.findall(text) + _CODE.findall(prose(text)))


def make_targets(makefile: Path = ROOT / "Makefile") -> set[str]:
    return set(re.findall(r"^([a-z][\w-]*):", makefile.read_text(), flags=re.MULTILINE))


def module_flags(module: str, root: Path = ROOT) -> set[str] | None:
    """The ``--flags`` a ``python -m`` module declares (every ``"--x"`` string in its file or
    package); None if there is no such runnable module."""
    path = root.joinpath(*module.split("."))
    files = [path.with_suffix(".py")] if path.with_suffix(".py").exists() else []
    if path.is_dir() and (path / "__main__.py").exists():
        files = list(path.glob("*.py"))
    if not files:
        return None
    flags = set()
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                flags |= set(re.findall(r"^--[a-z][\w-]*$", node.value))
    return flags


def unknown_commands(text: str, targets: set[str], flags_of=module_flags) -> list[str]:
    """``make`` targets that the Makefile lacks, ``python -m pipeline.…`` modules that do
    not exist, and flags they do not declare, as the docs show them."""
    problems = []
    code = code_text(text)
    for target in _MAKE.findall(code):
        if target not in targets:
            problems.append(f"make {target}: no such target")
    for module, rest in _PYTHON_M.findall(code):
        flags = flags_of(module)
        if flags is None:
            problems.append(f"python -m {module}: no such module")
            continue
        for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", rest):
            if flag not in flags and flag != "--help":
                problems.append(f"python -m {module} {flag}: no such flag")
    return problems


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_make_target_and_pipeline_command_shown_exists_with_its_flags(doc):
    assert unknown_commands(doc.read_text(), make_targets()) == []


def test_a_dropped_flag_or_target_is_reported():
    text = "```bash\nmake repro\nmake gone\npython -m pipeline.serve --port 1 --colour\n```\n"
    text += "`python -m pipeline.nothing`\n"
    assert unknown_commands(text, {"repro"}) == [
        "make gone: no such target",
        "python -m pipeline.serve --colour: no such flag",
        "python -m pipeline.nothing: no such module",
    ]


def test_the_readme_diagram_is_dvc_dag(tmp_path):
    import subprocess
    import sys

    dvc = Path(sys.executable).with_name("dvc")
    shown = re.search(r"```mermaid\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    assert shown, "README has no mermaid diagram"
    dag = subprocess.run([str(dvc), "dag", "--mermaid"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    assert shown.group(1).split() == dag.split()


_BLOCK = re.compile(r"(?:<!--\s*(not run:.*?)-->\s*\n)?```(?:bash|sh|shell)\n(.*?)^```",
                    re.MULTILINE | re.DOTALL)  # fmt: skip


def shell_blocks(text: str) -> list[tuple[str | None, str]]:
    """(the ``<!-- not run: why -->`` marker before it or None, the block) of every shell
    block."""
    return [(m.group(1), m.group(2)) for m in _BLOCK.finditer(text)]


def guides() -> list[Path]:
    return sorted((ROOT / "docs").rglob("*.md"))


@pytest.mark.parametrize("doc", guides(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_a_shell_block_not_run_says_why_and_which_test_covers_it(doc):
    for marker, block in shell_blocks(doc.read_text()):
        if marker is not None:
            reason = marker.removeprefix("not run:").strip()
            assert len(reason) > 10, f"{doc.name}: a marker without its reason: {block[:60]}"


@pytest.mark.slow
def test_every_shell_block_of_the_guides_that_is_not_marked_runs_on_a_smoke_project(
    smoke_project, tmp_path
):
    """The guides' shell blocks without a ``not run`` marker, each run by bash -e in a copy
    of the smoke project (venv first on PATH), must exit 0."""
    import subprocess

    from pipeline.testing.project import clone_of, stage_env

    project = clone_of(smoke_project, tmp_path / "project")
    ran = 0
    for doc in guides():
        for marker, block in shell_blocks(doc.read_text()):
            if marker is not None:
                continue
            proc = subprocess.run(["bash", "-e", "-c", block], cwd=project, env=stage_env(),
                                  capture_output=True, text=True, timeout=300)  # fmt: skip
            assert proc.returncode == 0, f"{doc.name}:\n{block}\n{proc.stderr[-2000:]}"
            ran += 1
    assert ran >= 3


def test_the_readme_is_a_landing_page_that_opens_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    first = _FENCE.search(text).group(1)
    assert first.splitlines()[0].startswith("make repro")
    assert first.splitlines()[1].startswith("make test")
    linked = set(re.findall(r"\]\((docs/[\w/-]+\.md)\)", text))
    assert {p.relative_to(ROOT).as_posix() for p in guides()} <= linked


def test_the_site_builds_in_strict_mode(tmp_path):
    """``make docs``: MkDocs refuses a broken link or anchor in strict mode."""
    import subprocess
    import sys

    mkdocs = Path(sys.executable).with_name("mkdocs")
    proc = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    home = (tmp_path / "site" / "index.html").read_text()
    assert "make repro" in home and 'href="pipeline/"' in home
    assert (tmp_path / "site" / "BENCHMARKS" / "index.html").exists()


def test_the_site_points_links_at_its_pages():
    import importlib.util

    spec = importlib.util.spec_from_file_location("hooks", ROOT / "docs/_site/hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    text = (
        "[a](docs/serving.md#x) [b](params.yaml) [c](BENCHMARKS.md)\n```\n[d](params.yaml)\n```\n"
    )
    assert hooks.rewrite(text, "README.md", "index.md") == (
        "[a](serving.md#x) `b` [c](BENCHMARKS.md)\n```\n[d](params.yaml)\n```\n"
    )
    assert (
        hooks.rewrite("[l](../README.md#layout)", "docs/dev.md", "dev.md") == "[l](index.md#layout)"
    )
