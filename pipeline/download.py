"""DVC stage ``download``: fetch the four MNIST files into data/raw, verified by checksum.

Mirrors come from params.yaml (``download.mirrors``) unless ``MNIST_MIRROR`` is set: one or
more (comma-separated) http(s):// URLs, file:// URLs or local directories. Each file is
streamed to a temp file next to its destination, verified (SHA-256 of the *uncompressed*
content) and only then moved into place, so data/raw never holds a partial or bad file.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import logging
import os
import socket
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Mapping, Sequence
from http.client import HTTPException
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from pipeline.core import layout
from pipeline.core.cli import run
from pipeline.core.data import atomic_write
from pipeline.core.errors import DownloadError
from pipeline.core.params import load_params

log = logging.getLogger(__name__)

# SHA-256 of the uncompressed IDX files (../shared/mnist/SHA256SUMS). The published MD5s of
# the same uncompressed content: train-images 6bbc9ace898e44ae57da46a324031adb, train-labels
# a25bea736e30d166cdddb491f175f624, t10k-images 2646ac647ad5339dbf082846283269ea,
# t10k-labels 27ae3e4e09519cfbb04c329615203637. We hash after decompression because
# mirrors differ in how they gzip the same bytes.
MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte.gz": (
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"
    ),
    "train-labels-idx1-ubyte.gz": (
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"
    ),
    "t10k-images-idx3-ubyte.gz": (
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"
    ),
    "t10k-labels-idx1-ubyte.gz": (
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"
    ),
}
OUT_DIR = layout.RAW_DIR
CHUNK = 1 << 16
USER_AGENT = "lenet5-mnist-mlops/0.1 (python-urllib)"


class _AttemptError(Exception):
    """One attempt on one mirror failed; ``transient`` says whether to retry it."""

    def __init__(self, reason: str, transient: bool) -> None:
        super().__init__(reason)
        self.reason, self.transient = reason, transient


def _kind(mirror: str) -> str:
    """'http', 'file' or 'dir'; DownloadError for any other scheme."""
    scheme = urllib.parse.urlsplit(mirror).scheme.lower()
    if scheme in ("http", "https"):
        return "http"
    if scheme == "file":
        return "file"
    if scheme == "":
        return "dir"
    raise DownloadError(
        f"unsupported mirror scheme {scheme}:// in {mirror!r} "
        "(use http(s)://, file:// or a local directory)"
    )


def resolve_mirrors(configured: Sequence[str], env: Mapping[str, str] = os.environ) -> list[str]:
    """The mirrors to try: MNIST_MIRROR (comma-separated) if set, else ``configured``."""
    override = env.get("MNIST_MIRROR", "").strip()
    mirrors = [m.strip() for m in (override.split(",") if override else configured)]
    mirrors = [m for m in mirrors if m]
    if not mirrors:
        raise DownloadError("no mirror to download from (MNIST_MIRROR or download.mirrors)")
    if override:
        log.info("MNIST_MIRROR is set: using %s", ", ".join(mirrors))
    return [str(Path(m).expanduser().resolve()) if _kind(m) == "dir" else m for m in mirrors]


def _gz_problem(path: Path, sha256: str) -> str | None:
    """Why ``path`` is not a gzip of content hashing to ``sha256``, or None if it is."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as raw:
            if raw.read(2) != b"\x1f\x8b":
                return "not a gzip file"
            raw.seek(0)
            with gzip.GzipFile(fileobj=raw) as gz:
                while chunk := gz.read(CHUNK):
                    digest.update(chunk)
    except (EOFError, zlib.error, gzip.BadGzipFile):
        return "truncated/corrupt gzip stream"
    except OSError as e:
        return f"cannot read: {e.strerror or e}"
    got = digest.hexdigest()
    if got != sha256.lower():
        return f"checksum mismatch (sha256 {got[:8]}… != expected {sha256[:8]}…)"
    return None


def _classify(e: BaseException, timeout_s: float) -> tuple[str, bool]:
    """A short reason for a fetch error and whether it is worth retrying."""
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code}", e.code >= 500 or e.code == 429
    if isinstance(e, urllib.error.URLError):
        if not isinstance(e.reason, BaseException):
            return str(e.reason), False
        e = e.reason
    if isinstance(e, TimeoutError):
        return f"timed out after {timeout_s:g}s", True
    if isinstance(e, ConnectionRefusedError):
        return "connection refused", True
    if isinstance(e, ssl.SSLCertVerificationError):
        return "TLS certificate verification failed", False
    if isinstance(e, socket.gaierror):
        return f"cannot resolve host ({e.strerror})", e.errno == socket.EAI_AGAIN
    if isinstance(e, FileNotFoundError | IsADirectoryError | NotADirectoryError):
        return "no such file", False
    if isinstance(e, PermissionError):
        return "permission denied", False
    return (getattr(e, "strerror", None) or str(e) or type(e).__name__), True


def _progress_enabled() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI")


def _copy(src: BinaryIO, tmp: Path, name: str, total: int | None) -> int:
    """Stream ``src`` into ``tmp``; write errors abort the whole download."""
    try:  # not a `with`: only errors of the open and the writes mean "cannot write"
        out = open(tmp, "wb")  # noqa: SIM115
    except OSError as e:
        raise DownloadError(f"{name}: cannot write {tmp}: {e.strerror}") from None
    done = 0
    with (
        out,
        tqdm(
            total=total,
            desc=name,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            leave=False,
            disable=not _progress_enabled(),
        ) as bar,
    ):
        while chunk := src.read(CHUNK):
            try:
                out.write(chunk)
            except OSError as e:
                raise DownloadError(f"{name}: cannot write {tmp}: {e.strerror}") from None
            done += len(chunk)
            bar.update(len(chunk))
    return done


def _attempt(mirror: str, name: str, sha256: str, tmp: Path, timeout_s: float) -> None:
    """One try: copy ``name`` from ``mirror`` into ``tmp`` and verify it."""
    kind = _kind(mirror)
    try:
        if kind == "http":
            url = mirror.rstrip("/") + "/" + urllib.parse.quote(name)
            req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                done = _copy(resp, tmp, name, total)
        else:
            folder = (
                Path(urllib.request.url2pathname(urllib.parse.urlsplit(mirror).path))
                if kind == "file"
                else Path(mirror)
            )
            if not folder.is_dir():
                raise _AttemptError("no such directory", transient=False)
            with open(folder / name, "rb") as f:
                total = os.fstat(f.fileno()).st_size
                done = _copy(f, tmp, name, total)
    except (OSError, HTTPException) as e:
        raise _AttemptError(*_classify(e, timeout_s)) from None
    if total is not None and done != total:
        raise _AttemptError(f"incomplete read ({done} of {total} bytes)", transient=True)
    if problem := _gz_problem(tmp, sha256):
        raise _AttemptError(problem, transient=False)


def fetch_file(
    name: str,
    sha256: str,
    mirrors: Sequence[str],
    out_dir: Path,
    *,
    timeout_s: float,
    retries: int,
    backoff_s: float,
) -> Path:
    """Make ``out_dir/name`` a verified copy, trying each mirror in order."""
    dest = out_dir / name
    if dest.exists():
        problem = _gz_problem(dest, sha256)
        if problem is None:
            log.info("%s: already present and verified", name)
            return dest
        log.warning("%s: existing file is invalid (%s); removing and re-fetching", name, problem)
    try:
        dest.unlink(missing_ok=True)
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"{name}: cannot prepare {dest}: {e.strerror}") from None
    for stale in out_dir.glob(f".{glob.escape(name)}.*"):  # left by a killed run: data/raw
        stale.unlink(missing_ok=True)  # is a DVC output, so it must hold no strays
    failures: list[str] = []

    def fetch_into(tmp: Path) -> None:
        for mirror in mirrors:
            if _fetch_from(mirror, name, sha256, tmp, timeout_s, retries, backoff_s, failures):
                return
        raise DownloadError(f"{name}: every mirror failed: {'; '.join(failures)}")

    atomic_write(dest, fetch_into)  # only a verified file is renamed into place
    return dest


def _fetch_from(
    mirror: str,
    name: str,
    sha256: str,
    tmp: Path,
    timeout_s: float,
    retries: int,
    backoff_s: float,
    failures: list[str],
) -> bool:
    """Try ``mirror`` up to ``retries`` times (transient errors only); True once ``tmp``
    holds a verified copy, else the reason is appended to ``failures``."""
    for attempt in range(1, max(1, retries) + 1):
        try:
            _attempt(mirror, name, sha256, tmp, timeout_s)
        except _AttemptError as e:
            if not e.transient or attempt >= retries:
                log.warning("%s: %s failed (%s)", name, mirror, e.reason)
                failures.append(f"{mirror} ({e.reason})")
                return False
            wait = backoff_s * 2 ** (attempt - 1)
            log.warning(
                "%s: %s attempt %d/%d failed (%s); retrying in %gs",
                name, mirror, attempt, retries, e.reason, wait,
            )  # fmt: skip
            time.sleep(wait)
        else:
            log.info("%s: fetched from %s and verified", name, mirror)
            return True
    return False


def download_all(
    mirrors: Sequence[str],
    out_dir: Path,
    files: Mapping[str, str] = MNIST_FILES,
    *,
    timeout_s: float,
    retries: int,
    backoff_s: float,
) -> list[Path]:
    """Fetch and verify every file in ``files`` (name -> uncompressed SHA-256)."""
    return [
        fetch_file(
            name, sha, mirrors, out_dir, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s
        )
        for name, sha in files.items()
    ]


def main() -> None:
    """DVC stage entry point: params.yaml's download section -> data/raw."""
    params = load_params().download
    mirrors = resolve_mirrors(params.mirrors)
    start = time.monotonic()
    paths = download_all(
        mirrors,
        OUT_DIR,
        timeout_s=params.timeout_s,
        retries=params.retries,
        backoff_s=params.backoff_s,
    )
    size = sum(p.stat().st_size for p in paths)
    log.info(
        "%d files verified in %s (%.1f MB, %.1fs)",
        len(paths),
        OUT_DIR,
        size / 1e6,
        time.monotonic() - start,
    )


if __name__ == "__main__":
    run(main)
