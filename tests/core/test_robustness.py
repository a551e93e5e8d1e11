"""The seeded perturbations of pipeline/core/robustness.py on small synthetic digits."""

import numpy as np
import pytest
from scipy import ndimage

from pipeline.core import robustness
from pipeline.core.robustness import PERTURBATIONS, perturbed_sets, rng_for, sample


def _digits(n: int = 16, seed: int = 0) -> np.ndarray:
    """n 28×28 'digits': a bright stroke (a bar and a blob) on black, away from the edges."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        r, c = rng.integers(8, 14, size=2)
        x[i, r : r + 8, c : c + 3] = 255
        x[i, r + 6 : r + 9, c : c + 7] = 200
    return x


def _dot(n: int, r: int = 14, c: int = 14) -> np.ndarray:
    x = np.zeros((n, 28, 28), np.uint8)
    x[:, r, c] = 255
    return x


def test_names_in_order():
    assert list(PERTURBATIONS) == [
        "shift_2px",
        "rotate_15deg",
        "noise",
        "inverted",
        "thick",
        "thin",
    ]


@pytest.mark.parametrize("name", list(PERTURBATIONS))
def test_every_perturbation_keeps_shape_and_dtype(name):
    x = _digits(5)
    out = PERTURBATIONS[name](x, rng_for(0, name))
    assert out.shape == x.shape and out.dtype == np.uint8
    assert not np.shares_memory(out, x)


def test_perturbed_sets_are_deterministic_per_seed():
    x = _digits()
    a, b, c = perturbed_sets(x, 7), perturbed_sets(x, 7), perturbed_sets(x, 8)
    assert list(a) == list(PERTURBATIONS)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    for name in ("shift_2px", "rotate_15deg", "noise"):  # the seeded ones
        assert not np.array_equal(a[name], c[name]), name


def test_each_set_depends_on_the_seed_and_its_name_only():
    x = _digits()
    np.testing.assert_array_equal(
        perturbed_sets(x, 3)["noise"], robustness.noise(x, rng_for(3, "noise"))
    )


def test_perturbed_sets_rejects_non_uint8_images():
    with pytest.raises(ValueError, match="uint8"):
        perturbed_sets(_digits().astype(np.float32), 0)


def test_inverted_is_exact():
    x = np.random.default_rng(0).integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    np.testing.assert_array_equal(robustness.invert(x, rng_for(0, "inverted")), 255 - x)


def test_shift_moves_each_image_2px_towards_a_neighbour():
    x = _dot(400)
    out = robustness.shift(x, rng_for(0, "shift_2px"))
    assert (out.reshape(len(x), -1) > 0).sum(axis=1).tolist() == [1] * len(x)  # mass kept
    where = np.argwhere(out == 255)[:, 1:] - 14  # (dy, dx) of each image
    assert set(np.abs(where).ravel()) <= {0, 2}
    assert not (where == 0).all(axis=1).any()  # never the identity
    assert {tuple(d) for d in where} == {
        (dy, dx) for dy in (-2, 0, 2) for dx in (-2, 0, 2) if dy or dx
    }  # all 8 directions occur


def test_shift_fills_with_zeros():
    x = np.full((50, 28, 28), 255, np.uint8)
    out = robustness.shift(x, rng_for(1, "shift_2px"))
    assert (out == 0).sum(axis=(1, 2)).min() == 2 * 28  # at least two blank rows or columns
    assert ((out == 0).sum(axis=(1, 2)) <= 4 * 28).all()


def test_rotate_keeps_mass_and_matches_scipy():
    x = _digits(20)
    sign = rng_for(0, "rotate_15deg").choice(np.array([-1, 1]), size=len(x))
    out = robustness.rotate(x, rng_for(0, "rotate_15deg"))
    mass = out.sum(axis=(1, 2), dtype=float) / x.sum(axis=(1, 2), dtype=float)
    assert mass == pytest.approx(np.ones(len(x)), abs=0.03)
    assert not np.array_equal(out, x)
    for img, s, got in zip(x, sign, out, strict=True):
        ref = ndimage.rotate(
            img.astype(float), 15 * s, reshape=False, order=1, mode="grid-constant"
        )
        assert np.abs(np.rint(ref) - got).max() <= 1


def test_rotate_uses_both_signs():
    x = np.zeros((40, 28, 28), np.uint8)
    x[:, 4:24, 13:15] = 255  # a vertical bar: +15° and -15° lean it opposite ways
    out = robustness.rotate(x, rng_for(0, "rotate_15deg")).astype(float)
    top_left = out[:, :10, :14].sum(axis=(1, 2)) > out[:, :10, 14:].sum(axis=(1, 2))
    assert 0 < top_left.sum() < len(x)


def test_noise_has_the_stated_sigma_and_is_clipped():
    x = np.full((20, 28, 28), 128, np.uint8)
    out = robustness.noise(x, rng_for(0, "noise")).astype(float)
    assert out.std() == pytest.approx(0.2 * 255, rel=0.05)
    assert out.mean() == pytest.approx(128, abs=1.5)
    black = robustness.noise(np.zeros((2, 28, 28), np.uint8), rng_for(0, "noise"))
    assert black.min() == 0 and (black == 0).mean() > 0.45  # negative noise clips to 0


def test_thick_adds_ink_and_thin_removes_it():
    x = _digits()
    thick = robustness.thicken(x, rng_for(0, "thick"))
    thin = robustness.thin(x, rng_for(0, "thin"))
    ink = x.sum(axis=(1, 2), dtype=float)
    assert (thick.sum(axis=(1, 2), dtype=float) > ink).all()
    assert (thin.sum(axis=(1, 2), dtype=float) < ink).all()
    assert (thick >= x).all() and (thin <= x).all()
    assert (thin.sum(axis=(1, 2)) > 0).all()  # a 3-px stroke survives a 2×2 erosion


def test_sample_is_a_seeded_sorted_subset():
    a = sample(10_000, 2000, 0)
    assert len(a) == len(np.unique(a)) == 2000 and (np.diff(a) > 0).all()
    assert a.min() >= 0 and a.max() < 10_000
    np.testing.assert_array_equal(a, sample(10_000, 2000, 0))
    assert not np.array_equal(a, sample(10_000, 2000, 1))
    np.testing.assert_array_equal(sample(50, None, 0), np.arange(50))
    np.testing.assert_array_equal(sample(50, 80, 0), np.arange(50))


def test_rotate_by_turns_each_image_by_its_own_angle_as_scipy_does():
    x = _digits(12)
    angles = np.array([-15, -7, 0, 3, 15, 40, -40, 7, 0, 1, 2, -2])
    out = robustness.rotate_by(x, angles)
    assert np.array_equal(out[angles == 0], x[angles == 0])
    for img, angle, got in zip(x, angles, out, strict=True):
        ref = ndimage.rotate(img.astype(float), angle, reshape=False, order=1, mode="grid-constant")
        assert np.abs(np.rint(ref) - got).max() <= 1
