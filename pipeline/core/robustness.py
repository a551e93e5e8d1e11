"""Seeded perturbations of test digits that real inputs show (NumPy/SciPy only).

Images are uint8 N×28×28, 0–255, a white digit on black, as the prepared splits hold them.
Every perturbation is a function ``(x, rng) -> uint8 array of x's shape`` that works on the
whole batch at once (the full test set is 10,000 images):

- ``shift_2px``: each image moved 2 px towards one of its 8 neighbours (seeded per image),
  zero fill;
- ``rotate_15deg``: rotated by +15° or -15° about the centre (sign seeded per image),
  bilinear, zero fill;
- ``noise``: additive Gaussian noise, sigma 0.2 × 255, clipped to 0–255;
- ``inverted``: 255 - x, a dark digit on light paper;
- ``thick`` / ``thin``: grey dilation / erosion with a 2×2 window (strokes about one pixel
  wider / narrower).

:func:`sample` picks which test images to perturb (a seeded sample: scoring six copies of all
10,000 would cost ~5x scoring them once). :func:`perturbed_sets` applies every
perturbation; each draws from its own generator, seeded by
``seed`` and its name, so the sets depend on the seed only (not on the order or on which
other perturbations exist).
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable

import numpy as np
from scipy import ndimage, sparse

Perturbation = Callable[[np.ndarray, np.random.Generator], np.ndarray]

SHIFT_PX = 2
ROTATE_DEG = 15.0
NOISE_SIGMA = 0.2 * 255
STROKE_WINDOW = (1, 2, 2)  # per image: 2×2 pixels
# The 8 neighbour directions (dy, dx), each coordinate -1, 0 or 1, not both 0.
_DIRECTIONS = np.array([(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx])


def _to_uint8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def shift(x: np.ndarray, rng: np.random.Generator, px: int = SHIFT_PX) -> np.ndarray:
    """Each image shifted ``px`` pixels towards a random one of its 8 neighbours, zero fill."""
    n, h, w = x.shape
    which = rng.integers(len(_DIRECTIONS), size=n)
    padded = np.pad(x, ((0, 0), (px, px), (px, px)))
    out = np.empty_like(x)
    for k, (dy, dx) in enumerate(_DIRECTIONS * px):
        idx = np.flatnonzero(which == k)
        # out[i, r, c] = x[i, r - dy, c - dx]: the content moves by (+dy, +dx).
        out[idx] = padded[idx, px - dy : px - dy + h, px - dx : px - dx + w]
    return out


def rotate(x: np.ndarray, rng: np.random.Generator, degrees: float = ROTATE_DEG) -> np.ndarray:
    """Each image rotated by ±``degrees`` about its centre (sign seeded per image; positive
    is counter-clockwise on screen, as ``scipy.ndimage.rotate``), bilinear, same size,
    zero fill.

    The same pixels as ``ndimage.rotate(image, ±degrees, reshape=False, order=1,
    mode="grid-constant")`` of each image (±1 grey level of rounding), as one sparse matrix
    product per sign: ndimage on an N×28×28 stack interpolates in 3-D and costs ~7× more.
    """
    n, h, w = x.shape
    sign = rng.choice(np.array([-1, 1]), size=n)
    out = np.empty_like(x)
    for s in (-1, 1):
        idx = np.flatnonzero(sign == s)
        if len(idx):
            padded = np.zeros((len(idx), h + 2, w + 2), np.float32)  # zero fill outside
            padded[:, 1:-1, 1:-1] = x[idx]
            moved = _rotation_matrix(h, w, s * degrees) @ padded.reshape(len(idx), -1).T
            out[idx] = _to_uint8(moved.T.reshape(len(idx), h, w))
    return out


def rotate_by(x: np.ndarray, degrees: np.ndarray) -> np.ndarray:
    """Image i rotated by ``degrees[i]`` (whole degrees; positive is counter-clockwise),
    as :func:`rotate` does: one sparse matrix product per distinct angle."""
    n, h, w = x.shape
    out = np.empty_like(x)
    for angle in np.unique(degrees):
        idx = np.flatnonzero(degrees == angle)
        padded = np.zeros((len(idx), h + 2, w + 2), np.float32)  # zero fill outside
        padded[:, 1:-1, 1:-1] = x[idx]
        moved = _rotation_matrix(h, w, float(angle)) @ padded.reshape(len(idx), -1).T
        out[idx] = _to_uint8(moved.T.reshape(len(idx), h, w))
    return out


@functools.cache
def _rotation_matrix(h: int, w: int, degrees: float) -> sparse.csr_matrix:
    """(h·w) × ((h+2)·(w+2)) bilinear weights: output pixel <- the 4 input pixels around
    where it comes from, in the image zero-padded by 1 (so edges fade to zero)."""
    t = np.deg2rad(degrees)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    r, c = np.mgrid[0:h, 0:w].reshape(2, -1).astype(np.float64)
    # Output -> input coordinates (the inverse rotation), +1 for the padding.
    y = np.cos(t) * (r - cy) + np.sin(t) * (c - cx) + cy + 1
    xx = -np.sin(t) * (r - cy) + np.cos(t) * (c - cx) + cx + 1
    inside = (y >= 0) & (y <= h + 1) & (xx >= 0) & (xx <= w + 1)
    y0 = np.clip(np.floor(y), 0, h).astype(np.intp)
    x0 = np.clip(np.floor(xx), 0, w).astype(np.intp)
    fy, fx = np.clip(y - y0, 0, 1), np.clip(xx - x0, 0, 1)
    stride = w + 2
    cols = [y0 * stride + x0, y0 * stride + x0 + 1, (y0 + 1) * stride + x0]
    cols.append((y0 + 1) * stride + x0 + 1)
    weights = [(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx]
    rows = np.tile(np.arange(h * w), 4)
    vals = np.concatenate(weights) * np.tile(inside, 4)
    shape = (h * w, (h + 2) * stride)
    return sparse.csr_matrix((vals.astype(np.float32), (rows, np.concatenate(cols))), shape=shape)


def noise(x: np.ndarray, rng: np.random.Generator, sigma: float = NOISE_SIGMA) -> np.ndarray:
    """Additive Gaussian noise (``sigma`` in grey levels), clipped to 0–255."""
    return _to_uint8(x + np.float32(sigma) * rng.standard_normal(x.shape, dtype=np.float32))


def invert(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Inverted polarity: a dark digit on light paper."""
    return 255 - x


def thicken(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Thicker strokes: grey dilation of each image with a 2×2 window."""
    return ndimage.grey_dilation(x, size=STROKE_WINDOW, mode="constant", cval=0)


def thin(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Thinner strokes: grey erosion of each image with a 2×2 window."""
    return ndimage.grey_erosion(x, size=STROKE_WINDOW, mode="constant", cval=0)


PERTURBATIONS: dict[str, Perturbation] = {
    "shift_2px": shift,
    "rotate_15deg": rotate,
    "noise": noise,
    "inverted": invert,
    "thick": thicken,
    "thin": thin,
}


def rng_for(seed: int, name: str) -> np.random.Generator:
    """The generator of one perturbation: from ``seed`` and the perturbation's name."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def sample(n: int, size: int | None, seed: int) -> np.ndarray:
    """Sorted indices of ``size`` of ``n`` images drawn without replacement (all of them if
    ``size`` is None or >= n); the same arguments give the same indices."""
    if size is None or size >= n:
        return np.arange(n)
    return np.sort(rng_for(seed, "sample").choice(n, size=size, replace=False))


def perturbed_sets(x: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Every perturbation of ``x`` (uint8 N×28×28), in PERTURBATIONS' order; the same
    ``x`` and ``seed`` give the same arrays."""
    if x.dtype != np.uint8 or x.ndim != 3:
        raise ValueError(f"expected uint8 images N×H×W, got {x.dtype} {x.shape}")
    return {name: f(x, rng_for(seed, name)) for name, f in PERTURBATIONS.items()}
