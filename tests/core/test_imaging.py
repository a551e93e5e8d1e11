"""pipeline.core.imaging: any PNG/JPEG -> MNIST's 28×28 form (20 px box, centred at 14,14)."""

from __future__ import annotations

import io
import os
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipeline.core import imaging
from pipeline.core.data import read_idx_gz
from pipeline.core.errors import DataError
from pipeline.testing.project import SHARED_MNIST

W, H = 300, 200  # a "scan": landscape, much larger than 28×28


def draw(kind: str, bg: int = 255, ink: int = 0, size: tuple[int, int] = (W, H)) -> np.ndarray:
    """A synthetic digit as a gray uint8 array: a slanted "1", an "0" ellipse or a "-" bar."""
    im = Image.new("L", size, bg)
    d = ImageDraw.Draw(im)
    if kind == "one":
        d.line([(150, 30), (160, 170)], fill=ink, width=14)
    elif kind == "zero":
        d.ellipse([110, 40, 190, 160], outline=ink, width=12)
    else:  # a wide bar, 4:1
        d.rectangle([50, 80, 249, 129], fill=ink)
    return np.asarray(im)


def stats(y: np.ndarray) -> tuple[int, int, float, float]:
    """(box height, box width, centre-of-mass row, col) in pixel-index coordinates."""
    rows, cols = np.flatnonzero(y.any(axis=1)), np.flatnonzero(y.any(axis=0))
    m = y.astype(np.float64)
    com_r = (m.sum(axis=1) * np.arange(28)).sum() / m.sum()
    com_c = (m.sum(axis=0) * np.arange(28)).sum() / m.sum()
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1, com_r, com_c


def assert_mnist_like(y: np.ndarray) -> None:
    assert y.shape == (28, 28) and y.dtype == np.uint8
    # black background: the outer ring is 0, and so is most of the field
    assert max(y[0].max(), y[-1].max(), y[:, 0].max(), y[:, -1].max()) == 0
    assert (y == 0).mean() > 0.5
    assert y.max() >= 200  # white ink, contrast stretched
    h, w, com_r, com_c = stats(y)
    assert max(h, w) in (19, 20)
    # Convention (MNIST's own, measured on its test set): the centre of mass is moved by a
    # whole-pixel shift to the nearest point of (14, 14), so it lies within 0.5 px of it.
    assert abs(com_r - 14) <= 0.5 + 1e-6 and abs(com_c - 14) <= 0.5 + 1e-6


def save(arr_or_im, path: Path, **kw) -> Path:
    im = arr_or_im if isinstance(arr_or_im, Image.Image) else Image.fromarray(arr_or_im)
    im.save(path, **kw)
    return path


@pytest.mark.parametrize("kind", ["one", "zero"])
def test_black_on_white_is_inverted_scaled_and_centred(kind, tmp_path):
    y = imaging.to_mnist(imaging.load_image(save(draw(kind), tmp_path / "d.png")))
    assert_mnist_like(y)


@pytest.mark.parametrize("kind", ["one", "zero"])
def test_light_and_dark_backgrounds_give_the_same_digit(kind):
    dark_on_light = imaging.to_mnist(draw(kind, bg=255, ink=0).astype(np.float32))
    light_on_dark = imaging.to_mnist(draw(kind, bg=0, ink=255).astype(np.float32))
    assert_mnist_like(light_on_dark)  # no inversion needed
    assert np.abs(dark_on_light.astype(int) - light_on_dark.astype(int)).max() <= 1


def test_low_contrast_jpeg_is_stretched(tmp_path):
    path = save(draw("zero", bg=170, ink=110), tmp_path / "faint.jpg", quality=75)
    y = imaging.to_mnist(imaging.load_image(path))
    assert_mnist_like(y)
    assert y.max() >= 240


@pytest.mark.parametrize("ink", [(0, 0, 0), (255, 255, 255)], ids=["dark-ink", "light-ink"])
def test_transparent_background(ink, tmp_path):
    """A digit drawn on a transparent canvas: composited onto a contrasting background."""
    im = Image.new("RGBA", (W, H), (*ink, 0))  # fully transparent, same colour as the ink
    ImageDraw.Draw(im).ellipse([110, 40, 190, 160], outline=(*ink, 255), width=12)
    path = save(im, tmp_path / "rgba.png")
    y = imaging.to_mnist(imaging.load_image(path))
    assert_mnist_like(y)
    expected = imaging.to_mnist(draw("zero").astype(np.float32))
    assert np.abs(y.astype(int) - expected.astype(int)).max() <= 1


@pytest.mark.parametrize("kind", ["one", "zero"])
def test_photo_like_noisy_background(kind, tmp_path):
    rng = np.random.default_rng(0)
    gray = draw(kind, bg=200, ink=40).astype(np.float64) + rng.normal(0, 20, (H, W))
    path = save(np.clip(gray, 0, 255).astype(np.uint8), tmp_path / "photo.jpg", quality=90)
    y = imaging.to_mnist(imaging.load_image(path))
    assert_mnist_like(y)
    clean = imaging.to_mnist(draw(kind).astype(np.float32))
    assert best_shifted_correlation(y.astype(float), clean.astype(float)) > 0.95


@pytest.mark.parametrize("scale", [1, 4])
def test_thin_pen_line_survives_denoising(scale):
    """A 2 px line is not mistaken for noise, and comes out as bright as MNIST's ink."""
    im = Image.new("L", (W * scale, H * scale), 255)
    line = [(120, 60), (150, 30), (160, 170)]  # a "1" with its flag
    ImageDraw.Draw(im).line([(x * scale, y * scale) for x, y in line], fill=0, width=2)
    y = imaging.to_mnist(np.asarray(im, dtype=np.float32))
    assert_mnist_like(y)
    assert stats(y)[:2] == (20, 6)


def test_aspect_ratio_is_kept():
    y = imaging.to_mnist(draw("bar").astype(np.float32))  # 200×50 box
    h, w, _, _ = stats(y)
    assert (h, w) == (5, 20)


def test_exif_rotation_is_applied(tmp_path):
    """Phone photos store the rotation in EXIF: a bar saved sideways comes out upright."""
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    path = save(draw("bar"), tmp_path / "rotated.jpg", exif=exif)
    h, w, _, _ = stats(imaging.to_mnist(imaging.load_image(path)))
    assert (h, w) in ((20, 5), (20, 6))


def test_16_bit_png(tmp_path):
    gray16 = draw("zero").astype(np.uint16) * 257
    y = imaging.to_mnist(imaging.load_image(save(gray16, tmp_path / "d16.png")))
    expected = imaging.to_mnist(draw("zero").astype(np.float32))
    assert np.abs(y.astype(int) - expected.astype(int)).max() <= 1


@pytest.mark.parametrize(
    "gray",
    [
        np.full((H, W), 255, np.uint8),  # blank page
        np.clip(np.random.default_rng(1).normal(200, 20, (H, W)), 0, 255),  # noise only
    ],
    ids=["blank", "noise-only"],
)
def test_no_digit(gray):
    with pytest.raises(DataError, match="no digit found"):
        imaging.to_mnist(gray)


def test_rejects_colour_arrays():
    with pytest.raises(ValueError, match="2-D"):
        imaging.to_mnist(np.zeros((28, 28, 3)))


# --- real MNIST digits, printed back as scans ------------------------------------------


@pytest.fixture(scope="module")
def mnist_test_images() -> np.ndarray:
    path = SHARED_MNIST / "t10k-images-idx3-ubyte.gz"
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{path} is missing: CI must provide the local MNIST mirror")
        pytest.skip(f"{path} not found")
    return read_idx_gz(path, ndim=3)


def best_shifted_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation, allowing b a shift of up to 1 px (see test_real_mnist_digits_round_trip)."""
    return max(
        np.corrcoef(a.ravel(), np.roll(b, (dr, dc), axis=(0, 1)).ravel())[0, 1]
        for dr in (-1, 0, 1)
        for dc in (-1, 0, 1)
    )


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_real_mnist_digits_round_trip(fmt, mnist_test_images, tmp_path):
    """An MNIST digit blown up 10× and printed black on white comes back as itself.

    Up to a 1 px shift: MNIST's centres of mass fill [13.5, 14.5] uniformly, so a digit
    whose centre sits near 13.5 may be re-centred one pixel over after the round trip (a
    thin "1" then correlates only ~0.7 unshifted) — both placements are MNIST-valid.
    """
    plain, shifted = [], []
    for i in range(20):
        original = mnist_test_images[i]
        scan = Image.fromarray(255 - original).resize((280, 280), Image.Resampling.NEAREST)
        y = imaging.to_mnist(imaging.load_image(save(scan, tmp_path / f"{i}.{fmt}")))
        assert y.shape == (28, 28) and y.dtype == np.uint8
        a, b = original.astype(np.float64), y.astype(np.float64)
        plain.append(np.corrcoef(a.ravel(), b.ravel())[0, 1])
        shifted.append(best_shifted_correlation(a, b))
        assert np.abs(a - b).mean() < 25, i
        _, _, com_r, com_c = stats(y)
        assert abs(com_r - 14) <= 0.5 + 1e-6 and abs(com_c - 14) <= 0.5 + 1e-6
    assert min(shifted) > 0.95, shifted
    assert np.median(plain) > 0.97, plain


def test_an_mnist_sized_png_is_left_almost_as_is(mnist_test_images, tmp_path):
    """A 28×28 white-on-black input (no blur, no inversion) keeps its shape."""
    for i in range(10):
        original = mnist_test_images[i]
        y = imaging.to_mnist(imaging.load_image(save(original, tmp_path / f"{i}.png")))
        assert best_shifted_correlation(original.astype(float), y.astype(float)) > 0.9


# --- bad files: one clear line, fast --------------------------------------------------


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A tiny valid-looking PNG whose header claims width×height (a decompression bomb)."""
    buf = io.BytesIO()
    Image.new("1", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    assert data[12:16] == b"IHDR"
    data[16:20] = width.to_bytes(4, "big")
    data[20:24] = height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    path.write_bytes(bytes(data))
    return path


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.png: no such file$"):
        imaging.load_image(tmp_path / "nope.png")


def test_empty_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.png: empty file$"):
        imaging.load_image(tmp_path / "empty.png")


def test_text_renamed_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not a picture\n")
    with pytest.raises(DataError) as e:
        imaging.load_image(path)
    assert str(e.value) == f"{path}: not an image (cannot identify image file)"


def test_truncated_png(tmp_path):
    data = save(draw("zero"), tmp_path / "full.png").read_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.png: cannot decode image"):
        imaging.load_image(path)


@pytest.mark.parametrize(
    ("width", "height", "message"),
    [
        # above our limit (40 MP), below Pillow's warning (~89 MP)
        (7000, 7000, "image too large (7000×7000 pixels)"),
        # between Pillow's warning and its error: the warning is not let through
        (10000, 10000, "image too large (10000×10000 pixels)"),
        # above Pillow's own DecompressionBombError
        (50000, 50000, "image too large (2,500,000,000 pixels)"),
    ],
)
def test_decompression_bomb_is_refused_before_decoding(width, height, message, tmp_path):
    path = png_claiming(tmp_path / "bomb.png", width, height)
    assert path.stat().st_size < 200
    start = time.perf_counter()
    with pytest.raises(DataError) as e:
        imaging.load_image(path)
    assert time.perf_counter() - start < 2
    assert str(e.value) == f"{path}: {message}"


def test_prepare_stacks_and_names_the_bad_file(tmp_path):
    good = [save(draw(k), tmp_path / f"{k}.png") for k in ("one", "zero")]
    batch = imaging.prepare(good)
    assert batch.shape == (2, 28, 28) and batch.dtype == np.uint8
    assert imaging.prepare([]).shape == (0, 28, 28)

    blank = save(np.full((H, W), 255, np.uint8), tmp_path / "blank.png")
    with pytest.raises(DataError) as e:
        imaging.prepare([*good, blank])
    assert str(e.value).startswith(f"{blank}: no digit found")
    with pytest.raises(DataError, match="missing.png: no such file"):
        imaging.prepare([good[0], tmp_path / "missing.png", good[1]])
