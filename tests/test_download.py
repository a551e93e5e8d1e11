"""The download stage against real files and a real loopback HTTP server (no network mocks)."""

from __future__ import annotations

import functools
import gzip
import hashlib
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipeline.core.errors import DownloadError
from pipeline.download import (
    MNIST_FILES,
    _gz_problem,
    download_all,
    fetch_file,
    resolve_mirrors,
)

ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST = ROOT.parent / "shared" / "mnist"
NAME = "tiny-labels-idx1-ubyte.gz"
# An IDX1-like payload: magic 0x801, count, then bytes that do not compress to nothing.
CONTENT = struct.pack(">II", 0x801, 4000) + hashlib.sha512(b"seed").digest() * 63
FAST = {"timeout_s": 2.0, "retries": 3, "backoff_s": 0.0}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_gz(folder: Path, name: str = NAME, content: bytes = CONTENT) -> str:
    """Write ``folder/name`` as a gzip of ``content``; return the content's SHA-256."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(gzip.compress(content))
    return sha(content)


def verified(path: Path, sha256: str) -> bool:
    """``path`` is a gzip of content with this SHA-256 (the stage's own check)."""
    return _gz_problem(path, sha256) is None


def listing(folder: Path) -> list[str]:
    """Every entry in ``folder``, hidden temp files included."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- loopback HTTP servers ------------------------------------------------------------------


class QuietHandler(SimpleHTTPRequestHandler):
    """Serves a directory, records each request path, logs nothing."""

    requests: list[str]
    release: threading.Event

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.requests.append(self.path)
        self.respond()

    def respond(self) -> None:
        super().do_GET()


class FlakyHandler(QuietHandler):
    """HTTP 500 for the first ``failures`` requests, then serves normally."""

    failures = 0

    def respond(self) -> None:
        if type(self).failures > 0:
            type(self).failures -= 1
            self.send_error(500)
        else:
            super().respond()


class HalfBodyHandler(QuietHandler):
    """Sends the headers and half the body, then stalls (``stall``) or hangs up."""

    stall = True
    failures = 10**6  # requests to spoil before serving normally

    def respond(self) -> None:
        if type(self).failures <= 0:
            return super().respond()
        type(self).failures -= 1
        body = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        if self.stall:
            self.release.wait(5)  # bounded; set at teardown
        self.close_connection = True


@pytest.fixture
def serve() -> Iterator[Callable[..., tuple[str, list[str]]]]:
    """``serve(directory, handler=QuietHandler, **class_attrs) -> (base_url, request_paths)``."""
    servers: list[ThreadingHTTPServer] = []
    release = threading.Event()

    def start(
        directory: Path, handler: type[QuietHandler] = QuietHandler, **attrs: object
    ) -> tuple[str, list[str]]:
        requests: list[str] = []
        cls = type(
            handler.__name__, (handler,), {"requests": requests, "release": release, **attrs}
        )
        srv = ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(cls, directory=str(directory))
        )
        srv.daemon_threads = True
        threading.Thread(
            target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_port}/", requests

    yield start
    release.set()
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def refused_url() -> str:
    """A loopback URL on a port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


# --- resolve_mirrors --------------------------------------------------------------------------


def test_resolve_mirrors_env_replaces_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    configured = ["https://example.invalid/mnist/", "http://other.invalid/"]
    assert resolve_mirrors(configured, env={}) == configured
    assert resolve_mirrors(configured, env={"MNIST_MIRROR": ""}) == configured
    monkeypatch.chdir(tmp_path)
    env = {"MNIST_MIRROR": "http://127.0.0.1:1/a/, mirror_dir ,file:///srv/mnist"}
    assert resolve_mirrors(configured, env=env) == [
        "http://127.0.0.1:1/a/",
        str((tmp_path / "mirror_dir").resolve()),
        "file:///srv/mnist",
    ]
    with pytest.raises(DownloadError, match="no mirror"):
        resolve_mirrors(configured, env={"MNIST_MIRROR": " , "})


@pytest.mark.parametrize("mirror", ["ftp://ftp.example.invalid/mnist/", "s3://bucket/mnist"])
def test_unsupported_scheme_rejected(mirror: str, tmp_path: Path):
    scheme = mirror.split(":")[0]
    with pytest.raises(DownloadError, match=f"unsupported mirror scheme {scheme}://"):
        resolve_mirrors([], env={"MNIST_MIRROR": mirror})
    with pytest.raises(DownloadError, match=f"{scheme}://"):
        resolve_mirrors([mirror], env={})
    with pytest.raises(DownloadError, match=f"{scheme}://"):
        fetch_file(NAME, sha(CONTENT), [mirror], tmp_path / "out", **FAST)
    assert listing(tmp_path / "out") == []


# --- verification of bad content ----------------------------------------------------------

GZ = gzip.compress(CONTENT)
BAD = {
    "garbage": (b"\x00\x01 definitely not gzip " * 50, "not a gzip file"),
    "html": (b"<!DOCTYPE html><html><body>403 Access Denied</body></html>\n", "not a gzip file"),
    "empty": (b"", "not a gzip file"),
    "truncated": (GZ[: len(GZ) // 2], "truncated/corrupt gzip stream"),
    "corrupt": (
        GZ[:20] + bytes(b ^ 0x5A for b in GZ[20:-8]) + GZ[-8:],
        "truncated/corrupt gzip stream",
    ),
    "wrong content": (
        gzip.compress(CONTENT[::-1]),
        f"checksum mismatch (sha256 {sha(CONTENT[::-1])[:8]}… != expected {sha(CONTENT)[:8]}…)",
    ),
}


@pytest.mark.parametrize("case", BAD)
def test_gz_check_reasons(case: str, tmp_path: Path):
    body, reason = BAD[case]
    path = tmp_path / NAME
    path.write_bytes(body)
    assert _gz_problem(path, sha(CONTENT)) == reason


def test_gz_check_accepts_good_file(tmp_path: Path):
    assert verified(tmp_path / NAME, make_gz(tmp_path))


@pytest.mark.parametrize("case", BAD)
def test_bad_content_over_http_leaves_nothing(case: str, tmp_path: Path, serve):
    body, reason = BAD[case]
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / NAME).write_bytes(body)
    url, requests = serve(tmp_path / "mirror")
    out = tmp_path / "out"
    with pytest.raises(DownloadError) as exc:
        fetch_file(NAME, sha(CONTENT), [url], out, **FAST)
    assert str(exc.value) == f"{NAME}: every mirror failed: {url} ({reason})"
    assert requests == [f"/{NAME}"]  # bad content is not retried on the same mirror
    assert listing(out) == []


# --- mirrors, retries, timeouts -------------------------------------------------------------


def test_404_then_second_mirror(tmp_path: Path, serve):
    expected = make_gz(tmp_path / "good")
    (tmp_path / "empty").mkdir()
    empty_url, empty_requests = serve(tmp_path / "empty")
    good_url, _ = serve(tmp_path / "good")
    out = tmp_path / "out"
    assert fetch_file(NAME, expected, [empty_url, good_url], out, **FAST) == out / NAME
    assert empty_requests == [f"/{NAME}"]  # 404 is not retried
    assert listing(out) == [NAME]
    assert verified(out / NAME, expected)


def test_every_mirror_down(tmp_path: Path, serve):
    (tmp_path / "empty").mkdir()
    url404, _ = serve(tmp_path / "empty")
    refused, missing_dir = refused_url(), str(tmp_path / "no-such-dir")
    out = tmp_path / "out"
    with pytest.raises(DownloadError) as exc:
        fetch_file(
            NAME,
            sha(CONTENT),
            [refused, url404, missing_dir],
            out,
            timeout_s=2,
            retries=2,
            backoff_s=0.01,
        )
    assert str(exc.value) == (
        f"{NAME}: every mirror failed: {refused} (connection refused); "
        f"{url404} (HTTP 404); {missing_dir} (no such directory)"
    )
    assert "\n" not in str(exc.value)
    assert listing(out) == []


def test_500_is_retried_with_backoff(tmp_path: Path, serve, caplog):
    expected = make_gz(tmp_path / "mirror")
    url, requests = serve(tmp_path / "mirror", FlakyHandler, failures=2)
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="pipeline.download"):
        fetch_file(NAME, expected, [url], out, timeout_s=2, retries=3, backoff_s=0.01)
    assert len(requests) == 3
    assert "attempt 1/3 failed (HTTP 500); retrying in 0.01s" in caplog.text
    assert "attempt 2/3 failed (HTTP 500); retrying in 0.02s" in caplog.text
    assert listing(out) == [NAME]


def test_500_until_retries_run_out(tmp_path: Path, serve):
    make_gz(tmp_path / "mirror")
    url, requests = serve(tmp_path / "mirror", FlakyHandler, failures=5)
    with pytest.raises(DownloadError, match=rf"{NAME}: every mirror failed: .* \(HTTP 500\)$"):
        fetch_file(NAME, sha(CONTENT), [url], tmp_path / "out", timeout_s=2, retries=2, backoff_s=0)
    assert len(requests) == 2
    assert listing(tmp_path / "out") == []


def test_connection_dropped_mid_body_is_retried(tmp_path: Path, serve):
    expected = make_gz(tmp_path / "mirror")
    url, requests = serve(tmp_path / "mirror", HalfBodyHandler, stall=False, failures=1)
    fetch_file(NAME, expected, [url], tmp_path / "out", **FAST)
    assert len(requests) == 2
    assert listing(tmp_path / "out") == [NAME]


def test_server_that_never_answers_times_out(tmp_path: Path):
    with socket.socket() as silent:  # accepts connections (kernel backlog), never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        start = time.monotonic()
        with pytest.raises(DownloadError) as exc:
            fetch_file(
                NAME,
                sha(CONTENT),
                [url],
                tmp_path / "out",
                timeout_s=0.3,
                retries=2,
                backoff_s=0.01,
            )
    assert time.monotonic() - start < 5
    assert str(exc.value) == f"{NAME}: every mirror failed: {url} (timed out after 0.3s)"
    assert listing(tmp_path / "out") == []


def test_stalled_body_times_out(tmp_path: Path, serve):
    make_gz(tmp_path / "mirror")
    url, requests = serve(tmp_path / "mirror", HalfBodyHandler)
    with pytest.raises(DownloadError, match=r"\(timed out after 0.3s\)$"):
        fetch_file(
            NAME, sha(CONTENT), [url], tmp_path / "out", timeout_s=0.3, retries=2, backoff_s=0
        )
    assert len(requests) == 2
    assert listing(tmp_path / "out") == []


def test_interrupt_mid_download_removes_temp_file(tmp_path: Path, serve):
    make_gz(tmp_path / "mirror")
    url, _ = serve(tmp_path / "mirror", HalfBodyHandler)
    out, seen = tmp_path / "out", []

    def interrupt(signum: int, frame: object) -> None:
        seen.extend(listing(out))
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 1.5)  # mid-download: the server stalls 5 s
        with pytest.raises(KeyboardInterrupt):
            fetch_file(NAME, sha(CONTENT), [url], out, timeout_s=3, retries=1, backoff_s=0)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    [tmp] = seen  # it was there mid-download, a hidden file next to the destination ...
    assert tmp.startswith(f".{NAME}.") and tmp != NAME
    assert listing(out) == []  # ... and is gone


# --- files already present, local mirrors ---------------------------------------------------


def test_present_file_is_not_fetched_again(tmp_path: Path, serve, caplog):
    expected = make_gz(tmp_path / "out")
    url, requests = serve(tmp_path)
    with caplog.at_level(logging.INFO, logger="pipeline.download"):
        paths = download_all([url], tmp_path / "out", {NAME: expected}, **FAST)
    assert paths == [tmp_path / "out" / NAME]
    assert requests == []
    assert "already present and verified" in caplog.text


def test_invalid_present_file_is_replaced(tmp_path: Path, serve, caplog):
    expected = make_gz(tmp_path / "mirror")
    out = tmp_path / "out"
    out.mkdir()
    (out / NAME).write_bytes(b"<html>stale error page</html>")
    url, requests = serve(tmp_path / "mirror")
    with caplog.at_level(logging.WARNING, logger="pipeline.download"):
        fetch_file(NAME, expected, [url], out, **FAST)
    assert "existing file is invalid (not a gzip file)" in caplog.text
    assert requests == [f"/{NAME}"]
    assert verified(out / NAME, expected)
    assert listing(out) == [NAME]


def test_invalid_present_file_removed_even_if_fetch_fails(tmp_path: Path):
    out = tmp_path / "out"
    make_gz(out, content=b"not what we want")
    with pytest.raises(DownloadError, match="no such directory"):
        fetch_file(NAME, sha(CONTENT), [str(tmp_path / "nowhere")], out, **FAST)
    assert listing(out) == []


def test_stale_temp_file_of_a_killed_run_is_removed(tmp_path: Path):
    expected = make_gz(tmp_path / "mirror")
    out = tmp_path / "out"
    out.mkdir()
    (out / f".{NAME}.k3x9q_1z").write_bytes(b"half a download")  # as atomic_write names it
    (out / f".{NAME}.partial-999999999").write_bytes(b"half a download")  # older versions
    fetch_file(NAME, expected, [str(tmp_path / "mirror")], out, **FAST)
    assert listing(out) == [NAME]


def test_local_directory_and_file_url_mirrors(tmp_path: Path):
    files = {
        "a.gz": make_gz(tmp_path / "mirror", "a.gz", b"aaa" * 100),
        "b.gz": make_gz(tmp_path / "mirror", "b.gz", b"bbb" * 100),
    }
    out = tmp_path / "out"
    assert download_all([str(tmp_path / "mirror")], out, files, **FAST) == [
        out / "a.gz",
        out / "b.gz",
    ]
    shutil.rmtree(out)
    download_all(
        [(tmp_path / "empty").as_uri(), (tmp_path / "mirror").as_uri()], out, files, **FAST
    )
    assert listing(out) == ["a.gz", "b.gz"]


# --- the real MNIST files (../shared/mnist) ---------------------------------------------------


@pytest.fixture
def shared_mnist() -> Path:
    if not all((SHARED_MNIST / name).is_file() for name in MNIST_FILES):
        if os.environ.get("CI"):
            pytest.fail(f"local MNIST mirror missing: {SHARED_MNIST}")
        pytest.skip(f"local MNIST mirror not found at {SHARED_MNIST}")
    return SHARED_MNIST


def test_real_mnist_over_http(shared_mnist: Path, tmp_path: Path, serve):
    url, requests = serve(shared_mnist)
    out = tmp_path / "raw"
    paths = download_all([url], out, timeout_s=10, retries=2, backoff_s=0)
    assert paths == [out / name for name in MNIST_FILES]
    assert sorted(requests) == sorted(f"/{name}" for name in MNIST_FILES)
    assert listing(out) == sorted(MNIST_FILES)
    requests.clear()
    assert download_all([url], out, timeout_s=10, retries=2, backoff_s=0) == paths
    assert requests == []  # all four found present and verified


def test_real_mnist_from_local_directory(shared_mnist: Path, tmp_path: Path):
    out = tmp_path / "raw"
    mirrors = resolve_mirrors([], env={"MNIST_MIRROR": str(shared_mnist)})
    download_all(mirrors, out, timeout_s=10, retries=1, backoff_s=0)
    for name, expected in MNIST_FILES.items():
        assert verified(out / name, expected)
    assert listing(out) == sorted(MNIST_FILES)


# --- the stage as DVC runs it -------------------------------------------------------------


def test_stage_exits_nonzero_with_one_line_naming_the_file(tmp_path: Path):
    name = next(iter(MNIST_FILES))
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / name).write_bytes(b"\x1f\x8b\x08\x00 corrupted beyond repair")
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(ROOT / "params.yaml", work / "params.yaml")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MNIST_MIRROR": str(tmp_path / "mirror")}
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.download"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "ERROR" in last and f"{name}: every mirror failed" in last
    assert "truncated/corrupt gzip stream" in last
    assert "Traceback" not in proc.stderr
    assert listing(work / "data" / "raw") == []
