"""Bring any scanned or photographed digit (PNG, JPEG, ...) to MNIST's form.

MNIST was made from NIST's black-and-white digits like this (LeCun et al.): each digit was
size-normalized to fit a 20×20 box *preserving its aspect ratio*, and the resampling's
anti-aliasing turned its edges into gray levels; the 20×20 image was then put in a 28×28
field so that the digit's *centre of mass* sits at the field's centre. The model learned
exactly that: white (255) strokes on a black (0) background, about 20 px tall, centred by
mass, not by bounding box. :func:`to_mnist` repeats those steps for an arbitrary image, after
undoing what a scan or photo adds: a light background, low contrast, faint noise.

Conventions (measured on MNIST's 10,000 test digits, so they match what the model saw):

- Centre of mass in pixel-index coordinates (pixel ``i`` spans ``[i - 0.5, i + 0.5]``) is
  moved by a whole-pixel shift to the nearest point of (14, 14); MNIST's own centres of mass
  all lie in [13.5, 14.5] on both axes, mean 14.0. A digit whose box would leave the field
  is clipped back inside, so its centre may then be further off.
- The longer side of the digit's box is 20 px in 9,997 of MNIST's 10,000 test digits (19 in
  the others), counting every pixel >= 51, i.e. >= 20 % of full scale, so
  :data:`NOISE_THRESHOLD` = 0.2 keeps what MNIST's box is made of and drops a scan's faint
  noise, paper texture and JPEG ringing.

Pure functions of Pillow and NumPy; no model, no MLflow.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

from pipeline.core.errors import DataError, first_line

SIDE = 28  # MNIST's field
BOX = 20  # the longer side of the digit's box in that field
CENTRE = 14.0  # where MNIST's centres of mass lie (pixel-index coordinates, both axes)
# Larger images are refused before decoding: a photo of a digit needs far fewer pixels
# (a 12 MP phone photo is 12,000,000), and a small file claiming a huge size (a
# "decompression bomb") would otherwise cost gigabytes of memory.
MAX_PIXELS = 40_000_000
# Pixels below this fraction of full scale, after the contrast stretch, become 0.
NOISE_THRESHOLD = 0.2
# A digit must stand this many gray levels (of 255) above the background to count.
MIN_CONTRAST = 24.0
# Formats decoded: common raster formats only (never EPS and the like, which Pillow
# hands to external programs).
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")


def load_image(path: Path) -> np.ndarray:
    """Decode an image file into a 2-D float32 array of gray levels 0–255.

    Transparent pixels are composited onto a background that contrasts with the ink (white
    for dark ink, black for light ink), so a digit drawn on a transparent canvas keeps its
    shape. EXIF rotation (phone photos) is applied. Any problem with the file raises
    :class:`DataError` with one line naming it.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            if path.stat().st_size == 0:
                raise DataError(f"{path}: empty file")
            return _decode(f, path)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not an image") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


def image_from_bytes(data: bytes, name: str) -> np.ndarray:
    """:func:`load_image` for an uploaded file's bytes (``name`` only names it in errors)."""
    if not data:
        raise DataError(f"{name}: empty file")
    return _decode(io.BytesIO(data), Path(name))


def _decode(f, path: Path) -> np.ndarray:
    im = _open(f, path)
    with im:
        try:
            im.load()
            im = ImageOps.exif_transpose(im)
            return _to_gray(im)
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise DataError(f"{path}: cannot decode image ({first_line(e, 200)})") from None


def _open(f, path: Path) -> Image.Image:
    """``Image.open`` (header only) with the size checked before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own limit (~89 MP) and raises above twice that; ours is
            # lower and checked below, so the warning is just noise here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(f, formats=FORMATS)
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image (cannot identify image file)") from None
    except Image.DecompressionBombError as e:
        m = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(m.group(1)):,} pixels" if m else "too many pixels"
        raise DataError(f"{path}: image too large ({size})") from None
    except (SyntaxError, ValueError, EOFError) as e:  # a header Pillow recognised but can't parse
        raise DataError(f"{path}: cannot decode image ({first_line(e, 200)})") from None
    w, h = im.size
    if w * h > MAX_PIXELS:
        im.close()
        raise DataError(f"{path}: image too large ({w}×{h} pixels)")
    if w == 0 or h == 0:
        im.close()
        raise DataError(f"{path}: empty image ({w}×{h} pixels)")
    return im


def _to_gray(im: Image.Image) -> np.ndarray:
    if im.mode.startswith("I;16"):  # 16-bit PNG/TIFF
        return (np.asarray(im, dtype=np.float64) / 257.0).astype(np.float32)
    if im.mode in ("I", "F"):  # 32-bit: no fixed scale, so use the image's own range
        a = np.asarray(im, dtype=np.float64)
        span = a.max() - a.min()
        return ((a - a.min()) * (255.0 / span if span > 0 else 0.0)).astype(np.float32)
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"), dtype=np.float64) / 255.0
        ink = np.asarray(rgba.convert("RGB").convert("L"), dtype=np.float64)
        # The ink's colour is that of the opaque pixels: dark ink goes onto white, light
        # ink onto black, so the digit stays visible either way.
        opaque = alpha.sum()
        dark_ink = opaque == 0 or (ink * alpha).sum() / opaque <= 127
        background = 255.0 if dark_ink else 0.0
        return (ink * alpha + background * (1.0 - alpha)).astype(np.float32)
    if im.mode not in ("1", "L", "P", "RGB", "CMYK", "YCbCr"):
        im = im.convert("RGB")
    return np.asarray(im.convert("L"), dtype=np.float32)


def to_mnist(gray: np.ndarray) -> np.ndarray:
    """Normalize a gray image (any size, 0–255) the way MNIST was made: 28×28 uint8.

    1. Invert when the background is light (the median of the border pixels > 127): MNIST
       is white ink on black.
    2. Stretch the contrast: background level (border median) -> 0, the digit's ink -> 255.
    3. For images large enough to carry sensor noise (>= 100 px), remove it with a median
       filter and zero whatever lies outside the digit's footprint (where a blurred copy
       is above 10 % of its peak), so specks far from the digit cannot widen its box.
       Then zero what is below
       :data:`NOISE_THRESHOLD` of full scale.
    4. Crop to the digit's bounding box; scale it (Lanczos, i.e. anti-aliased) so its longer
       side is 20 px, keeping the aspect ratio, and its brightest pixel is 255 as in every
       MNIST digit (a thin pen line would otherwise shrink to a faint gray).
    5. Paste it into a black 28×28 field, shifted by whole pixels so its centre of mass lands
       at (14, 14) as in MNIST (kept inside the field).

    Raises :class:`DataError` ("no digit found") for a blank or featureless image.
    """
    g = np.asarray(gray, dtype=np.float32)
    if g.ndim != 2:
        raise ValueError(f"expected a 2-D gray image, got shape {g.shape}")
    if g.size == 0:
        raise DataError("no digit found (empty image)")
    if _border(g).size and np.median(_border(g)) > 127:
        g = 255.0 - g
    background = float(np.median(_border(g)))

    # Sensor noise and paper grain (images of 100 px and more): a median filter removes
    # speckles and keeps edges sharp. Then decide where the digit is on a blurred copy: what
    # noise is left averages out under the blur, while strokes stay. Tiny images (an MNIST
    # digit saved as PNG) are used as they are.
    radius = max(g.shape) / 100
    smooth = g
    if radius >= 1:
        img = _denoise(g, background, sizes=(5, 3) if radius >= 3 else (3,))
        g = np.asarray(img, dtype=np.float32)
        smooth = np.asarray(img.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32)
    excess = smooth - background
    peak = float(excess.max())
    if peak < MIN_CONTRAST:
        raise DataError("no digit found (blank image)")
    footprint = excess > NOISE_THRESHOLD / 2 * peak

    # Contrast stretch: background -> 0, the digit's bright end (99th percentile of its
    # footprint, robust to a few hot pixels) -> 255.
    ink = float(np.percentile(g[footprint], 99))
    if ink - background < MIN_CONTRAST:
        ink = background + peak
    x = np.clip((g - background) / (ink - background), 0.0, 1.0) * 255.0
    x[x < NOISE_THRESHOLD * 255.0] = 0.0
    if radius >= 1:
        x[~footprint] = 0.0

    rows, cols = np.flatnonzero(x.any(axis=1)), np.flatnonzero(x.any(axis=0))
    if rows.size == 0:
        raise DataError("no digit found (blank image)")
    box = x[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    digit = _fit_box(box)
    return _centre_by_mass(digit)


def _denoise(g: np.ndarray, background: float, sizes: tuple[int, ...]) -> Image.Image:
    """The largest median filter in ``sizes`` that keeps at least half of the ink.

    A median over k×k pixels erases strokes narrower than about k/2 px, so a thin pen line
    falls back to a smaller window (or none) instead of vanishing with the noise.
    """
    img = Image.fromarray(np.clip(g, 0, 255).astype(np.uint8))
    level = (background + float(g.max())) / 2
    ink = np.count_nonzero(g > level)
    for size in sizes:
        filtered = img.filter(ImageFilter.MedianFilter(size))
        if np.count_nonzero(np.asarray(filtered) > level) >= ink / 2:
            return filtered
    return img


def _border(g: np.ndarray) -> np.ndarray:
    """The outermost ring of pixels."""
    if min(g.shape) <= 2:
        return g.ravel()
    return np.concatenate([g[0], g[-1], g[1:-1, 0], g[1:-1, -1]])


def _fit_box(box: np.ndarray) -> np.ndarray:
    """Scale so the longer side is :data:`BOX` px, aspect kept, with Lanczos anti-aliasing."""
    h, w = box.shape
    scale = BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # Pillow: (width, height)
    resized = Image.fromarray(box.astype(np.float32)).resize(size, Image.Resampling.LANCZOS)
    # Lanczos overshoots a little around sharp edges; MNIST has no values outside 0–255.
    digit = np.clip(np.asarray(resized), 0.0, 255.0)
    # Every MNIST digit peaks at 254–255. A pen line much thinner than MNIST's strokes
    # (relative to the digit's size) averages out to gray when shrunk; bring it back up.
    peak = float(digit.max())
    return digit * (255.0 / peak) if peak > 0 else digit


def _centre_by_mass(digit: np.ndarray) -> np.ndarray:
    """Paste into a black 28×28 field with the centre of mass nearest to (14, 14)."""
    out = np.zeros((SIDE, SIDE), dtype=np.float32)
    h, w = digit.shape
    mass = digit.sum()
    if mass > 0:
        com_r = float((digit.sum(axis=1) * np.arange(h)).sum() / mass)
        com_c = float((digit.sum(axis=0) * np.arange(w)).sum() / mass)
    else:  # cannot happen for a non-blank box, but keep the box centred if it does
        com_r, com_c = (h - 1) / 2, (w - 1) / 2
    top = min(max(round(CENTRE - com_r), 0), SIDE - h)
    left = min(max(round(CENTRE - com_c), 0), SIDE - w)
    out[top : top + h, left : left + w] = digit
    return np.rint(out).astype(np.uint8)


def prepare(paths: Iterable[Path | str]) -> np.ndarray:
    """Decode and normalize every image: (N, 28, 28) uint8, ready for the model.

    All files are read before anything is returned, so one bad file fails the whole batch
    with a :class:`DataError` naming it.
    """
    out = []
    for p in paths:
        path = Path(p)
        gray = load_image(path)
        try:
            out.append(to_mnist(gray))
        except DataError as e:
            raise DataError(f"{path}: {e}") from None
    if not out:
        return np.zeros((0, SIDE, SIDE), dtype=np.uint8)
    return np.stack(out)
