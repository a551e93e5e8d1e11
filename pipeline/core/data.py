"""Data I/O and the pure math on it: IDX decoding, the stratified split, split files.

The prepared splits are ``.npz`` files holding ``x`` (uint8, N×28×28) and ``y`` (uint8, N).
Images stay raw: scaling and padding live inside the model, so training and serving see
the same bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.core.errors import DataError
from pipeline.core.layout import PREPARED_DIR, RUN_FILE, split_file

_IDX_UBYTE = 0x08  # the only element type MNIST uses


def decode_idx(buf: bytes, ndim: int, name: str = "IDX") -> np.ndarray:
    """Decode an IDX buffer of unsigned bytes with ``ndim`` dimensions.

    Header: 2 zero bytes, a type byte (0x08 = ubyte), a byte with the number of
    dimensions, then one big-endian uint32 per dimension.
    """
    if len(buf) < 4:
        raise DataError(f"{name}: too short for an IDX header ({len(buf)} bytes)")
    magic = int.from_bytes(buf[:4], "big")
    expected = (_IDX_UBYTE << 8) | ndim
    if magic != expected:
        raise DataError(f"{name}: bad IDX magic number 0x{magic:08x} (expected 0x{expected:08x})")
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(f"{name}: truncated IDX header")
    dims = tuple(int.from_bytes(buf[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(dims))
    if len(buf) - header != size:
        raise DataError(
            f"{name}: IDX dimensions {dims} need {size} bytes of data, found {len(buf) - header}"
        )
    return np.frombuffer(buf, dtype=np.uint8, offset=header).reshape(dims)


def read_idx_gz(path: Path, ndim: int) -> np.ndarray:
    """Read and decode a gzip-compressed IDX file."""
    try:
        with gzip.open(path, "rb") as f:
            buf = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: missing (run the download stage)") from None
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: corrupt gzip ({e})") from None
    return decode_idx(buf, ndim, name=path.name)


def check_pair(images: np.ndarray, labels: np.ndarray, name: str) -> None:
    """Images must be N×28×28, labels N digits in 0–9."""
    if images.shape[1:] != (28, 28):
        raise DataError(f"{name}: images are {images.shape[1:]}, expected 28×28")
    if len(images) != len(labels):
        raise DataError(f"{name}: {len(images)} images but {len(labels)} labels")
    if len(labels) and labels.max() > 9:
        raise DataError(f"{name}: label {int(labels.max())} outside 0–9")


def stratified_split(labels: np.ndarray, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): ``val_size`` samples drawn so each class keeps its share.

    Per-class quotas use largest remainders, so they sum exactly to ``val_size``. The
    same labels, size and seed always give the same split.
    """
    if not 0 < val_size < len(labels):
        raise DataError(f"validation size {val_size} must be between 1 and {len(labels) - 1}")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * val_size / len(labels)
    quota = np.floor(exact).astype(int)
    quota[np.argsort(-(exact - quota), kind="stable")[: val_size - quota.sum()]] += 1
    val = np.concatenate(
        [
            rng.permutation(np.flatnonzero(labels == c))[:q]
            for c, q in zip(classes, quota, strict=True)
        ]
    )
    val = rng.permutation(val)
    mask = np.ones(len(labels), bool)
    mask[val] = False
    train = rng.permutation(np.flatnonzero(mask))
    return train, val


def class_counts(labels: np.ndarray) -> dict[str, int]:
    """{"0": n0, ..., "9": n9}."""
    counts = np.bincount(labels, minlength=10)
    return {str(d): int(n) for d, n in enumerate(counts)}


def atomic_write(path: Path, write: Callable[[Path], None], suffix: str = "") -> None:
    """Call ``write(tmp_path)`` then rename into ``path``: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; others may read outputs
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_split(path: Path, x: np.ndarray, y: np.ndarray, **extra: np.ndarray) -> None:
    """Write one split as an uncompressed ``.npz`` (x: N×28×28 uint8, y: N uint8, and any
    ``extra`` arrays), byte for byte the same for the same arrays: ``np.savez`` stamps
    each member with the time of writing, so DVC would see a new file every run."""

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
            for name, array in {"x": x, "y": y, **extra}.items():
                member = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                with zf.open(member, "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.asanyarray(array), allow_pickle=False)

    atomic_write(path, write)


def load_split(name: str, directory: Path = PREPARED_DIR) -> tuple[np.ndarray, np.ndarray]:
    """Load a prepared split; no pickles are ever loaded."""
    path = split_file(name, directory)
    try:
        with np.load(path, allow_pickle=False) as z:
            x, y = z["x"], z["y"]
    except FileNotFoundError:
        raise DataError(f"{path}: missing (run the preprocess stage)") from None
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{path}: unreadable ({e})") from None
    check_pair(x, y, str(path))
    return x, y


def load_split_or_empty(name: str, directory: Path) -> tuple[np.ndarray, np.ndarray]:
    """:func:`load_split`, or no images where the split was never written (the feedback
    stage's splits in a workspace that has not run it)."""
    if not split_file(name, directory).exists():
        return np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.uint8)
    return load_split(name, directory)


def write_json(path: Path, obj: object) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))


def split_md5(*names: str, directory: Path = PREPARED_DIR) -> dict[str, str]:
    """{"train": md5, ...}: the prepared splits' DVC content hashes."""
    return {name: file_md5(split_file(name, directory)) for name in names}


def file_md5(path: Path) -> str:
    """MD5 of a file's bytes (DVC's content hash, so the two can be compared)."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_run(path: Path = RUN_FILE) -> dict[str, str]:
    """data/train/run.json: the MLflow ``run_id`` (and ``experiment_id``) train wrote."""
    try:
        run = json.loads(path.read_text())
        if not isinstance(run, dict) or not isinstance(run.get("run_id"), str):
            raise ValueError("no run_id in it")
    except FileNotFoundError:
        raise DataError(f"{path}: missing (run the train stage)") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable ({e}); run the train stage") from None
    return run
