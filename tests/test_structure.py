"""The shape of the code, read with :mod:`ast` only (nothing under pipeline/ is imported).

Rules, each reported in full (every offender, not the first one):

- **Mirrored tests.** Every module ``pipeline/<dirs>/X.py`` has ``tests/<dirs>/test_X.py``
  (``pipeline/core/tracking/runs.py`` -> ``tests/core/tracking/test_runs.py``), except
  ``__init__.py``, ``__main__.py`` and the test helpers in ``pipeline/testing/``.
- **No upward imports.** The layers, bottom up: ``pipeline.core`` (shared parts), the
  *stages* (the ``python -m pipeline.<name>`` commands of dvc.yaml) and the *commands*
  (every other ``pipeline.<name>``: compare, lineage, predict, tracking_server, tune). So
  ``pipeline.core`` imports no stage or command, no stage imports another stage, no command
  imports a stage, and no pipeline module imports ``pipeline.testing`` (the tests' helpers).
- **No import cycles** among pipeline modules, counting imports inside functions (the lazy
  ones run too) but not those under ``if TYPE_CHECKING:`` (they never run). ``from a.b
  import c`` depends on the module ``a.b.c`` when there is one, else on ``a.b``; a module
  is not counted as depending on its parent packages.
- **Short modules.** A module under pipeline/ has at most 350 lines, unless its module
  docstring says why it is longer: it contains the word ``long`` or ``lines`` (whole word,
  any case), e.g. "Long on purpose: one table of every check, read top to bottom".
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pipeline"
MAX_LINES = 350
_LENGTH_EXCUSE = re.compile(r"\b(long|lines)\b", re.IGNORECASE)


# ---------------------------------------------------------------------------- the modules


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package by dotted name (packages as their ``__init__``)."""
    return {module_name(p, package.parent): p for p in sorted(package.rglob("*.py"))}


def is_package(name: str, mods: dict[str, Path]) -> bool:
    return mods[name].name == "__init__.py"


# --------------------------------------------------------------------------- the imports


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: top level and in functions, not in the body
    of ``if TYPE_CHECKING:`` (its ``else:`` runs, so it counts)."""
    found: list[ast.Import | ast.ImportFrom] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))
    return found


def imports_of(name: str, source: str, mods: dict[str, Path]) -> set[str]:
    """The pipeline modules that module ``name`` imports (see the module docstring)."""
    package = name if is_package(name, mods) else name.rpartition(".")[0]
    deps: set[str] = set()
    for node in _import_nodes(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:  # relative: from . import x, from ..core import y
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join([*base, *([node.module] if node.module else [])])
            else:
                origin = node.module or ""
            targets = [
                f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in mods else origin
                for alias in node.names
            ]
        for target in targets:
            while target and target not in mods:  # import a.b.c where only a.b is ours
                target = target.rpartition(".")[0]
            if target and target != name:
                deps.add(target)
    return deps


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    return {name: imports_of(name, path.read_text(), mods) for name, path in mods.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component (Tarjan), as a path ``a, b, ..., a``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_path(graph, c) for c in components]


def _cycle_path(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest path from the component's first module back to itself (BFS)."""
    start = min(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if w not in previous:
                    previous[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")  # pragma: no cover


# ---------------------------------------------------------------------------- the layers


def stages(dvc_yaml: Path = ROOT / "dvc.yaml") -> set[str]:
    """``pipeline.<name>`` of every ``python -m pipeline.<name>`` stage in dvc.yaml."""
    found = set()
    for stage in yaml.safe_load(dvc_yaml.read_text())["stages"].values():
        match = re.match(r"python -m (pipeline\.\w+)\b", stage["cmd"])
        if match:
            found.add(match.group(1))
    return found


def layer(name: str, stage_names: set[str]) -> str:
    """core, testing, stage, command, or package (``pipeline`` itself)."""
    parts = name.split(".")
    if len(parts) == 1:
        return "package"
    top = ".".join(parts[:2])
    if parts[1] in ("core", "testing"):
        return parts[1]
    return "stage" if top in stage_names else "command"


def unit(name: str) -> str:
    """``pipeline.<name>``: the stage or command a module belongs to."""
    return ".".join(name.split(".")[:2])


def upward_imports(graph: dict[str, set[str]], stage_names: set[str]) -> list[str]:
    problems = []
    for src, deps in sorted(graph.items()):
        src_layer = layer(src, stage_names)
        for dst in sorted(deps):
            dst_layer = layer(dst, stage_names)
            if dst_layer == "testing" and src_layer != "testing":
                problems.append(f"{src} imports the test helpers {dst}")
            elif src_layer == "core" and dst_layer in ("stage", "command"):
                problems.append(f"core module {src} imports the {dst_layer} {dst}")
            elif src_layer == "stage" and dst_layer == "stage" and unit(src) != unit(dst):
                problems.append(f"stage {src} imports the stage {dst}")
            elif src_layer == "command" and dst_layer == "stage":
                problems.append(f"command {src} imports the stage {dst}")
    return problems


# ----------------------------------------------------------------------------- the rules


def mirror_of(path: Path) -> Path:
    """pipeline/<dirs>/X.py -> tests/<dirs>/test_X.py"""
    rel = path.relative_to(PACKAGE)
    return ROOT / "tests" / rel.parent / f"test_{rel.name}"


def missing_mirrors() -> list[str]:
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if path.name in ("__init__.py", "__main__.py") or rel.parts[0] == "testing":
            continue
        if not mirror_of(path).is_file():
            missing.append(f"{path.relative_to(ROOT)} -> {mirror_of(path).relative_to(ROOT)}")
    return missing


def too_long() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text()
        n = len(source.splitlines())
        if n > MAX_LINES and not _LENGTH_EXCUSE.search(ast.get_docstring(ast.parse(source)) or ""):
            found.append(f"{path.relative_to(ROOT)}: {n} lines")
    return found


def test_every_module_has_a_mirrored_test_module():
    missing = missing_mirrors()
    assert not missing, "modules without their test module:\n" + "\n".join(missing)


def test_no_upward_imports():
    problems = upward_imports(import_graph(modules()), stages())
    assert not problems, "upward imports:\n" + "\n".join(problems)


def test_no_import_cycles():
    cycles = find_cycles(import_graph(modules()))
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_modules_are_short_or_say_why():
    found = too_long()
    assert not found, (
        f"over {MAX_LINES} lines with no word 'long' or 'lines' in the module docstring "
        "to say why:\n" + "\n".join(found)
    )


# ------------------------------------------------- the checkers themselves, on toy sources


def test_the_layers_come_from_dvc_yaml():
    assert stages() == {
        "pipeline.download",
        "pipeline.preprocess",
        "pipeline.feedback",
        "pipeline.train",
        "pipeline.evaluate",
        "pipeline.register",
    }
    names = stages()
    assert layer("pipeline.core.tracking.runs", names) == "core"
    assert layer("pipeline.testing.project", names) == "testing"
    assert layer("pipeline.train", names) == "stage"
    assert layer("pipeline.tune.worker", names) == "command"


def third_party_importers(top: str) -> set[str]:
    """The pipeline modules that import package ``top`` when they run (lazily included)."""
    found = set()
    for name, path in modules().items():
        for node in _import_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                names = [] if node.level else [node.module or ""]
            if any(n == top or n.startswith(top + ".") for n in names):
                found.add(name)
    return found


def test_keras_and_tensorflow_come_from_the_backend_module_only():
    """pipeline.core.backend imports Keras without its scikit-learn start-up (1.7 s)."""
    for top in ("keras", "tensorflow"):
        assert third_party_importers(top) == {"pipeline.core.backend"}, top


def test_imports_count_lazy_ones_but_not_type_checking_ones():
    mods = {
        name: Path(name.replace(".", "/") + (".py" if name != "p.sub" else "/__init__.py"))
        for name in ("p", "p.a", "p.b", "p.c", "p.d", "p.sub", "p.sub.x", "p.sub.y")
    }
    mods["p"] = Path("p/__init__.py")
    source = """
from typing import TYPE_CHECKING
import os
from p import a
if TYPE_CHECKING:
    from p import b
else:
    import p.c
def f():
    from ..sub import x
    import p.d.not_a_module
"""
    assert imports_of("p.sub.y", source, mods) == {"p.a", "p.c", "p.sub.x", "p.d"}
    assert imports_of("p.sub", "from . import x\nfrom .x import thing", mods) == {"p.sub.x"}


def test_cycles_are_found_as_paths():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert sorted(find_cycles(graph)) == [["a", "b", "c", "a"], ["e", "e"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_upward_imports_are_named():
    names = {"pipeline.train", "pipeline.evaluate"}
    graph = {
        "pipeline.core.x": {"pipeline.train", "pipeline.core.y"},
        "pipeline.evaluate": {"pipeline.train", "pipeline.testing.project"},
        "pipeline.tune.worker": {"pipeline.train", "pipeline.tune.study", "pipeline.compare"},
        "pipeline.testing.project": {"pipeline.train"},
    }
    assert upward_imports(graph, names) == [
        "core module pipeline.core.x imports the stage pipeline.train",
        "pipeline.evaluate imports the test helpers pipeline.testing.project",
        "stage pipeline.evaluate imports the stage pipeline.train",
        "command pipeline.tune.worker imports the stage pipeline.train",
    ]


def test_mirrors_follow_the_package_layout():
    assert mirror_of(PACKAGE / "train.py") == ROOT / "tests" / "test_train.py"
    assert mirror_of(PACKAGE / "core" / "tracking" / "runs.py") == (
        ROOT / "tests" / "core" / "tracking" / "test_runs.py"
    )


def test_the_slowest_first_order_names_test_files_that_exist():
    """conftest's SLOWEST_FIRST schedules files by path: a renamed file would silently fall
    to the end of the queue."""
    from tests.conftest import SLOWEST_FIRST

    assert len(set(SLOWEST_FIRST)) == len(SLOWEST_FIRST)
    missing = [path for path in SLOWEST_FIRST if not (ROOT / path).is_file()]
    assert not missing, missing
