"""dvc.yaml's deps and params match what each stage's code really imports and reads.

``dvc repro`` reruns exactly the stages an edit can affect only if every stage lists all the
code it runs and every params key it reads. Here both are derived statically (``ast``, no
import of the project): the files are every project module Python executes for
``python -m pipeline.X`` (each parent package's ``__init__.py`` included; lazy imports inside
functions count, ``if TYPE_CHECKING:`` imports don't), and the keys are the attribute reads
of names typed as ``Params`` or one of its sections. Each problem names the stage and the
file or key, in both directions (missing, or listed but no longer used).
"""

from __future__ import annotations

import ast
import copy
import re
from functools import cache
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PARAMS_PY = "pipeline/core/params.py"
Env = dict[str, str]  # name -> "Params" or a section name ("train")


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _module_file(root: Path, name: str) -> str | None:
    base = root / name.replace(".", "/")
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f.relative_to(root).as_posix()
    return None


def _executed(root: Path, name: str) -> set[str]:
    """The project files ``import name`` runs: each package's __init__.py, then the module."""
    parts = name.split(".")
    if parts[0] != "pipeline":
        return set()
    found = (_module_file(root, ".".join(parts[: i + 1])) for i in range(len(parts)))
    return {f for f in found if f}


def _runtime(node: ast.AST) -> list[ast.AST]:
    """Every node below ``node`` except the bodies of ``if TYPE_CHECKING:`` (never run)."""
    out: list[ast.AST] = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and ast.unparse(child.test).endswith("TYPE_CHECKING"):
            for stmt in child.orelse:
                out += [stmt, *_runtime(stmt)]
        else:
            out += [child, *_runtime(child)]
    return out


def _imports(root: Path, file: str) -> set[str]:
    mod = file.removesuffix(".py").replace("/", ".")
    pkg = mod.removesuffix(".__init__") if file.endswith("/__init__.py") else mod.rpartition(".")[0]
    names: set[str] = set()
    for node in _runtime(_tree(root / file)):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            names |= {base} | {f"{base}.{a.name}" for a in node.names}  # a name or a submodule
    return names


def entry(root: Path, module: str) -> str | None:
    """The file ``python -m module`` runs as __main__: the module, or a package's __main__.py."""
    return _module_file(root, module + ".__main__") or _module_file(root, module)


def closure(root: Path, module: str) -> set[str]:
    """Files ``python -m module`` executes (a package runs its __init__, then __main__)."""
    done: set[str] = set()
    todo = _executed(root, module) | _executed(root, module + ".__main__")
    while todo:
        file = todo.pop()
        done.add(file)
        for name in _imports(root, file):
            todo |= _executed(root, name) - done
    return done


def _sections(root: Path) -> tuple[Env, dict[str, set[str]]]:
    """Class name -> type ("Params" or its section), and each section's keys."""
    classes = {c.name: c for c in _tree(root / PARAMS_PY).body if isinstance(c, ast.ClassDef)}

    def fields(c: ast.ClassDef) -> dict[str, str]:
        anns = (s for s in c.body if isinstance(s, ast.AnnAssign))
        return {
            s.target.id: ast.unparse(s.annotation) for s in anns if isinstance(s.target, ast.Name)
        }

    sections = fields(classes["Params"])  # section -> class name
    types = {"Params": "Params"} | {cls: sec for sec, cls in sections.items()}
    return types, {sec: set(fields(classes[cls])) for sec, cls in sections.items()}


def _ann(node: ast.expr | None, types: Env) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        node = ast.parse(node.value, mode="eval").body
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):  # X | None
        sides = [s for s in (node.left, node.right) if ast.unparse(s) != "None"]
        return _ann(sides[0], types) if len(sides) == 1 else None
    name = node.id if isinstance(node, ast.Name) else getattr(node, "attr", None)
    return types.get(name) if isinstance(name, str) else None


def read_keys(root: Path, files: set[str]) -> set[str]:
    """``section.key`` for every read of a key through a name typed as Params or a section.

    Typed names: parameters annotated ``Params``/``TrainParams``/..., names assigned
    ``load_params()`` (any call to a project function whose return annotation is such a
    type), ``<Params>.train``, and ``self.x`` where a class body annotates ``x``. Not reads:
    ``params.flat()`` (logging every param to MLflow is not depending on it), and the loader
    pipeline/core/params.py itself (it validates every key for whichever stage loads them).
    Dynamic access (``getattr(cfg, name)``) is not guessed at.
    """
    types, keys = _sections(root)
    code = [(f, _tree(root / f)) for f in sorted(files)]
    defs = [n for _, t in code for n in ast.walk(t) if isinstance(n, ast.FunctionDef)]
    returns = {d.name: t for d in defs if (t := _ann(d.returns, types))}
    attrs: Env = {}  # `self.x`, where a class body annotates `x: Params` (or a section)
    for f, tree in code:
        classes = [c for c in ast.walk(tree) if isinstance(c, ast.ClassDef) and f != PARAMS_PY]
        for n in (n for c in classes for n in c.body if isinstance(n, ast.AnnAssign)):
            if isinstance(n.target, ast.Name) and (t := _ann(n.annotation, types)):
                attrs[n.target.id] = t
    reads: set[str] = set()

    def typeof(e: ast.expr, env: Env) -> str | None:
        if isinstance(e, ast.Name):
            return env.get(e.id)
        if isinstance(e, ast.Call) and isinstance(e.func, ast.Name | ast.Attribute):
            return returns.get(e.func.id if isinstance(e.func, ast.Name) else e.func.attr)
        if isinstance(e, ast.Attribute):
            if isinstance(e.value, ast.Name) and e.value.id == "self":
                return attrs.get(e.attr)
            return e.attr if typeof(e.value, env) == "Params" and e.attr in keys else None
        return None

    def scope(body: list[ast.AST], env: Env) -> None:
        nested: list[ast.AST] = []
        for node in body:  # in source order, so `cfg = params.train` sees `params` typed
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                nested.append(node)
                continue
            if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                t = typeof(node.value, env) or _ann(getattr(node, "annotation", None), types)
                for name in (x.id for x in targets if isinstance(x, ast.Name)):
                    env.pop(name, None) if t is None else env.__setitem__(name, t)
            if isinstance(node, ast.Attribute) and (sec := typeof(node.value, env)) in keys:
                reads.update({f"{sec}.{node.attr}"} & {f"{sec}.{k}" for k in keys[sec]})
            scope(list(ast.iter_child_nodes(node)), env)
        for fn in nested:
            inner = dict(env)
            a = fn.args  # type: ignore[attr-defined]
            for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]:
                if arg is not None:
                    t = _ann(arg.annotation, types)
                    inner.pop(arg.arg, None) if t is None else inner.__setitem__(arg.arg, t)
            scope(fn.body if isinstance(fn.body, list) else [fn.body], inner)  # type: ignore

    for f, tree in code:
        if f != PARAMS_PY:
            scope(list(tree.body), {})
    return reads


def package_data(root: Path, files: set[str]) -> set[str]:
    """Non-Python files beside an executed module that it names in a string (a template
    such as ``card.md.j2``): the module reads them, so they are code deps too."""
    found = set()
    for file in files:
        named = {
            n.value
            for n in ast.walk(_tree(root / file))
            if isinstance(n, ast.Constant) and isinstance(n.value, str)
        }
        for other in (root / file).parent.iterdir():
            if other.is_file() and other.suffix not in (".py", ".pyc") and other.name in named:
                found.add(other.relative_to(root).as_posix())
    return found


def _covered(file: str, dep: str) -> bool:
    return file == dep or Path(dep) in Path(file).parents


def problems(dvc: dict, root: Path) -> list[str]:
    """Every mismatch between dvc.yaml and the code, one line each, naming stage and file/key."""
    out: list[str] = []
    _, keys = _sections(root)
    for stage, spec in dvc["stages"].items():
        cmd = " ".join(spec["cmd"]) if isinstance(spec["cmd"], list) else spec["cmd"]
        modules = re.findall(r"python\S* -m (\S+)", cmd)
        if not modules:
            out.append(f"stage {stage}: cannot tell which module `{cmd}` runs")
            continue
        files: set[str] = set()
        for m in modules:
            files |= closure(root, m)
            if m.split(".")[0] != "pipeline" or not entry(root, m):
                out.append(f"stage {stage}: runs {m}, which is not a module of the project")
        deps = [d for d in spec.get("deps", []) if isinstance(d, str)]
        code = [d for d in deps if d.endswith(".py") or _covered(d, "pipeline")]
        used = files | package_data(root, files)
        for f in sorted(used):
            if not any(_covered(f, d) for d in code):
                out.append(f"stage {stage}: {f} is imported but not in deps")
        for d in code:
            if not any(_covered(f, d) for f in used):
                out.append(f"stage {stage}: {d} is in deps but not imported")
        listed: list[str] = []
        for p in spec.get("params", []):  # `- train.epochs`, or `- params.yaml: [...]`
            listed += [p] if isinstance(p, str) else p.get("params.yaml", [])
        reads = read_keys(root, files)
        for k in sorted(reads):
            if k not in listed and k.partition(".")[0] not in listed:
                out.append(f"stage {stage}: reads {k} but it is not in params")
        for p in listed:
            if p not in reads and not (p in keys and any(k.startswith(p + ".") for k in reads)):
                out.append(f"stage {stage}: {p} is in params but not read")
    return out


def _dvc() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


def test_dvc_yaml_lists_exactly_the_code_and_params_each_stage_uses() -> None:
    found = problems(_dvc(), ROOT)
    assert not found, "dvc.yaml is out of step with the code:\n" + "\n".join(found)


def test_checker_names_the_stage_and_the_missing_file_or_key() -> None:
    reads = read_keys(ROOT, closure(ROOT, "pipeline.train"))
    assert {"train.epochs", "model.padding", "tracking.experiment"} <= reads
    assert "download.mirrors" not in reads  # only params.flat() and the loader touch it
    entry_file = entry(ROOT, "pipeline.train")  # pipeline/train.py or pipeline/train/__main__.py
    assert entry_file
    broken = copy.deepcopy(_dvc())
    train = broken["stages"]["train"]
    train["deps"] = [d for d in train["deps"] if not _covered(entry_file, d)]
    train["deps"].append("pipeline/core/gone.py")
    train["params"] = [p for p in train["params"] if p not in ("train", "train.epochs")]
    train["params"].append("train.gone")
    found = problems(broken, ROOT)
    assert f"stage train: {entry_file} is imported but not in deps" in found
    assert "stage train: pipeline/core/gone.py is in deps but not imported" in found
    assert "stage train: reads train.epochs but it is not in params" in found
    assert "stage train: train.gone is in params but not read" in found
