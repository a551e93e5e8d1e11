"""Throwaway copies of this project and the processes the tests run in them: stage
commands with the project's venv first on PATH, and real servers on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from pipeline.core.params import Params, load_params

ROOT = Path(__file__).resolve().parents[2]  # the checkout this package was installed from
SHARED_MNIST = ROOT.parent / "shared" / "mnist"
# Traffic that is not digits: Fashion-MNIST in MNIST's format (Debian's dataset-fashion-mnist)
FASHION = Path("/usr/share/datasets/fashion-mnist")
VENV_BIN = Path(sys.executable).parent


def stage_env(**extra: str) -> dict[str, str]:
    """Environment for `dvc`/stage subprocesses: this venv first on PATH, no outside store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYTHONPATH", None)
    # Tests never reach for the public mirrors, even when a stage reruns unexpectedly.
    env["MNIST_MIRROR"] = str(SHARED_MNIST)
    env.update(extra)
    return env


def run(
    cmd: list[str],
    cwd: Path,
    env: dict[str, str] | None = None,
    check: bool = True,
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    """Run a command; on an unexpected failure show its output in the assertion."""
    proc = subprocess.run(
        cmd, cwd=cwd, env=env or stage_env(), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n"
            f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
        )
    return proc


def copy_project(dest: Path) -> Path:
    """Copy the project's source (what git would commit) into ``dest`` as a fresh git repo."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for rel in files:
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    run(["git", "init", "-q", "-b", "main"], dest)
    run(["git", "add", "-A"], dest)
    run([*git, "commit", "-qm", "copy"], dest)
    return dest


def set_params(project: Path, **changes: object) -> None:
    """set_params(p, train__epochs=1) edits params.yaml (section__key=value)."""
    path = project / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        section, name = key.split("__", 1)
        raw[section][name] = value
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


SMOKE = {
    "train__max_samples": 2000,
    "train__epochs": 2,
    "train__batch_size": 128,
    "serve__drain_s": 0,
}  # (test services stop at once; tests/serve/test_main.py drains)
# For tests under load whose subject is not shedding (a swap, an outage, a restart): on a
# loaded CI machine (3 test workers on 2 cores) an image can wait past the shipped
# serve.max_queue_ms (500) and be refused, which is right for the service and says nothing
# of what those tests check. set_params(project, **NO_SHEDDING).
NO_SHEDDING = {"serve__max_queue_ms": 10_000}
# The stages that log to MLflow: what a test of a tracking store reruns (`dvc repro -f -s`);
# download and preprocess never see the store.
TRACKED_STAGES = ("train", "evaluate", "register")


def clone_of(project: Path, dest: Path) -> Path:
    """A full copy (data, DVC cache and MLflow store included) to change freely."""
    shutil.copytree(project, dest, symlinks=True, dirs_exist_ok=True)
    return dest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 120, poll_s: float = 0.5) -> None:
    """Poll ``url`` every ``poll_s`` until it answers 200; fail early if ``proc`` died."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(poll_s)
    raise AssertionError(f"{url} did not answer within {timeout}s")


class Server:
    """A server process in its own process group, stopped (with its workers) on exit."""

    def __init__(self, cmd: list[str], cwd: Path, env: dict[str, str], health_url: str):
        self.cmd, self.cwd, self.env, self.health_url = cmd, cwd, env, health_url

    def __enter__(self) -> subprocess.Popen:
        # A file, not a pipe: nobody drains a pipe, and a full one blocks the server.
        self.log = tempfile.NamedTemporaryFile("w+", prefix="server-", suffix=".log")
        self.proc = subprocess.Popen(
            self.cmd,
            cwd=self.cwd,
            env=self.env,
            text=True,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_http(self.health_url, self.proc)
        except BaseException as e:
            self.log.seek(0)
            output = self.log.read()[-4000:]
            self.__exit__()
            raise AssertionError(f"{e}\n--- server log\n{output}") from None
        return self.proc

    def __exit__(self, *exc: object) -> None:
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:  # a service writes its log's backlog before it exits: tens of MB may wait
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def tracking_server(workdir: Path, port: int | None = None) -> Server:
    """A real `mlflow server` on 127.0.0.1 (SQLite store and proxied artifacts in
    ``workdir``); the same ``workdir`` and ``port`` restart the same server."""
    port = port or free_port()
    uri = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{workdir / 'server.db'}",
        "--artifacts-destination",
        str(workdir / "server-artifacts"),
    ]
    # No job runner: MLflow would start 5 more worker processes for GenAI jobs (unused).
    env = stage_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    server = Server(cmd, workdir, env, f"{uri}/health")
    server.uri, server.port = uri, port
    return server


def start_training(project: Path, env: dict[str, str], until: str = "epoch 1/"):
    """Start the train stage in the background; return once its log shows ``until``."""
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.train"],
        cwd=project,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen.append(line)
        if until in line or not line:
            break
    assert proc.poll() is None, "".join(seen)
    return proc, seen


def reference_params(changes: dict[str, object] | None = None) -> Params:
    """The project's own params.yaml (the reference recipe), with flat ``section.key``
    changes (``{"train.epochs": 1}``), each checked as params.yaml's would be."""
    params = load_params(ROOT / "params.yaml")
    return params.with_values(changes) if changes else params


def scoring_service(
    project: Path, env: dict[str, str] | None = None, *args: str, port: int | None = None
) -> Server:
    """``python -m pipeline.serve`` on ``port`` (default: a free one) of 127.0.0.1 in
    ``project`` (``.url``, ``.port``); ready when ``/v2/health/ready`` answers 200."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "pipeline.serve", "--port", str(port), *args]
    url = f"http://127.0.0.1:{port}"
    server = Server(cmd, project, env or stage_env(), f"{url}/v2/health/ready")
    server.url, server.port = url, port
    return server


def feedback_key(project: Path, name: str, env: dict[str, str] | None = None) -> str:
    """A new feedback key for ``name``, issued as a user would (``pipeline.serve keys add``)."""
    cmd = [sys.executable, "-m", "pipeline.serve", "keys", "add", name]
    return run(cmd, project, env).stdout.strip()


def send_label(url: str, key: str | None, request_id: str, digit: int, index: int = 0):
    """POST one true label to a scoring service: (HTTP status, parsed JSON answer)."""
    import json
    import urllib.error
    import urllib.request

    body = json.dumps({"request_id": request_id, "index": index, "digit": digit}).encode()
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(f"{url}/feedback", body, headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def fashion_images():
    """Fashion-MNIST's 10,000 test images, (N, 28, 28) uint8, or None if not installed."""
    import gzip

    import numpy as np

    found = sorted(FASHION.rglob("t10k-images*")) if FASHION.exists() else []
    if not found:
        return None
    raw = found[0].read_bytes()
    raw = gzip.decompress(raw) if found[0].suffix == ".gz" else raw
    return np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)


def require(*commands: str, also_missing: tuple[str, ...] = ()) -> None:
    """Skip the calling test when one of these commands (or ``also_missing``: Debian
    packages found missing another way) is not installed; fail instead under CI=true, where
    ``make system-deps`` installs them."""
    import pytest

    missing = [c for c in commands if shutil.which(c) is None] + list(also_missing)
    if missing:
        reason = f"{', '.join(missing)} not installed: make system-deps"
        pytest.fail(reason) if os.environ.get("CI") else pytest.skip(reason)
