"""Security rules from RELIABILITY.md that the source itself must keep."""

import ast
import re
from pathlib import Path

import pytest

from pipeline.core.errors import DownloadError, redact
from pipeline.download import resolve_mirrors

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "pipeline").rglob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py"))


def calls(name: str):
    """Every call of ``<anything>.name(...)`` or ``name(...)`` in the project's code."""
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                fn = node.func
                called = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", None)
                if called == name:
                    yield path, node


def keyword(node: ast.Call, name: str):
    return next((k.value for k in node.keywords if k.arg == name), None)


def test_numpy_never_loads_pickles():
    loads = [(p, n) for p, n in calls("load") if "np" in ast.unparse(n.func)]
    assert loads, "expected np.load calls to check"
    for path, node in loads:
        value = keyword(node, "allow_pickle")
        assert isinstance(value, ast.Constant) and value.value is False, (
            f"{path.name}:{node.lineno}: np.load without allow_pickle=False"
        )


def test_keras_models_load_in_safe_mode():
    loads = list(calls("load_model"))
    keras_loads = [(p, n) for p, n in loads if "keras" in ast.unparse(n.func)]
    assert keras_loads
    for path, node in keras_loads:
        value = keyword(node, "safe_mode")
        assert isinstance(value, ast.Constant) and value.value is True, (
            f"{path.name}:{node.lineno}: keras load_model without safe_mode=True"
        )


def code_lines(doc: Path) -> list[str]:
    """Lines inside fenced code blocks: the commands a reader copies."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", doc.read_text(), flags=re.S)
    return [line for block in blocks for line in block.splitlines()]


def test_documented_servers_bind_to_loopback():
    commands = [
        line
        for doc in [*ROOT.glob("*.md"), *ROOT.glob("docs/**/*.md")]
        for line in code_lines(doc)
        if re.search(r"mlflow (server|ui|models serve)|http\.server", line)
    ]
    assert commands
    for line in commands:
        assert "--host 127.0.0.1" in line or "--bind 127.0.0.1" in line, line


def test_servers_started_by_tests_bind_to_loopback():
    # The tests and their helpers in pipeline/testing (tracking_server, Server, PostgreSQL).
    helpers = sorted((ROOT / "pipeline" / "testing").rglob("*.py"))
    for path in [*(ROOT / "tests").rglob("*.py"), *helpers]:
        if path.name == "test_security.py":
            continue
        text = path.read_text()
        for match in re.finditer(r'"--host",\s*"([^"]+)"', text):
            assert match.group(1) == "127.0.0.1", f"{path.name}: --host {match.group(1)}"
        assert "0.0.0.0" not in text, path.name


@pytest.mark.parametrize("mirror", ["ftp://host/mnist/", "s3://bucket/mnist/", "scp://h/x"])
def test_downloads_only_over_http_or_from_directories(mirror):
    with pytest.raises(DownloadError, match="unsupported"):
        resolve_mirrors([mirror], env={})


def test_credentials_are_redacted():
    assert redact("http://alice:pw@host:5000/x") == "http://***@host:5000/x"
    assert redact("https://token@host") == "https://***@host"
    assert redact("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"


def test_only_the_tracking_package_imports_mlflow():
    """Tracking in one place: stages and commands call pipeline.core.tracking, never MLflow."""
    importers = set()
    for path in (ROOT / "pipeline").rglob("*.py"):
        tree = ast.parse(path.read_text())
        typing_only = {  # `if TYPE_CHECKING:` imports are annotations, not calls
            id(n)
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and getattr(block.test, "id", "") == "TYPE_CHECKING"
            for n in ast.walk(block)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "mlflow" or n.startswith("mlflow.") for n in names):
                importers.add(path.relative_to(ROOT).as_posix())
    tracking = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "pipeline" / "core" / "tracking").rglob("*.py")
    }
    assert importers, "expected the tracking package to import MLflow"
    assert importers <= tracking, sorted(importers - tracking)
