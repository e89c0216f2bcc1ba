"""Rendering primitives: Gaussians, MTF, Poisson counts."""

import numpy as np
import pytest

from napari_atomnet.synth import apply_mtf, mtf, poisson_counts, render_gaussians
from napari_atomnet.synth.lattice import _splat_isotropic


def _moments(img):
    yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]].astype(float)
    m = img.sum()
    cy, cx = (img * yy).sum() / m, (img * xx).sum() / m
    cov = np.array(
        [
            [(img * (yy - cy) ** 2).sum(), (img * (yy - cy) * (xx - cx)).sum()],
            [(img * (yy - cy) * (xx - cx)).sum(), (img * (xx - cx) ** 2).sum()],
        ]
    )
    return m, cy, cx, cov / m


def test_peak_value_at_pixel_centre():
    img = render_gaussians((40, 50), [10.0], [20.0], [3.5], [2.0])
    assert img[10, 20] == pytest.approx(3.5, abs=1e-12)
    assert img.max() == img[10, 20]
    # one pixel away along x: A exp(-1 / (2 sigma^2))
    assert img[10, 21] == pytest.approx(3.5 * np.exp(-1 / 8), rel=1e-12)


def test_subpixel_centroid_and_integral():
    a, sy, sx = 2.0, 1.5, 3.0
    img = render_gaussians((64, 64), [30.3], [31.7], [a], [sy], [sx])
    m, cy, cx, cov = _moments(img)
    assert m == pytest.approx(2 * np.pi * a * sy * sx, rel=1e-5)
    assert cy == pytest.approx(30.3, abs=1e-4)
    assert cx == pytest.approx(31.7, abs=1e-4)
    assert cov[0, 0] == pytest.approx(sy**2, rel=1e-3)
    assert cov[1, 1] == pytest.approx(sx**2, rel=1e-3)
    assert abs(cov[0, 1]) < 1e-4


@pytest.mark.parametrize("theta", [np.pi / 6, -0.4, np.pi / 2])
def test_theta_rotates_the_covariance(theta):
    sy, sx = 1.5, 4.0
    img = render_gaussians((80, 80), [40.2], [39.6], [1.0], [sy], [sx], theta)
    _, cy, cx, cov = _moments(img)
    # the Gaussian's own y axis points along (cos theta, sin theta) in (row, col)
    eu = np.array([np.cos(theta), np.sin(theta)])
    ev = np.array([-np.sin(theta), np.cos(theta)])
    expected = sy**2 * np.outer(eu, eu) + sx**2 * np.outer(ev, ev)
    np.testing.assert_allclose(cov, expected, atol=2e-3 * sx**2)
    assert (cy, cx) == pytest.approx((40.2, 39.6), abs=1e-4)


def test_fast_isotropic_splat_matches_render_gaussians():
    rng = np.random.default_rng(0)
    n = 300
    y, x = rng.uniform(-5, 105, n), rng.uniform(-5, 125, n)
    amp, sig = rng.uniform(0.1, 2.0, n), rng.uniform(0.7, 4.0, n)
    ref = render_gaussians((100, 120), y, x, amp, sig)
    fast = _splat_isotropic((100, 120), y, x, amp, sig)
    np.testing.assert_allclose(fast, ref, rtol=1e-10, atol=1e-12)


def test_row_shift_moves_each_row():
    rng = np.random.default_rng(1)
    y, x = rng.uniform(0, 30, 20), rng.uniform(0, 40, 20)
    shift = rng.normal(0, 1.0, 30)
    img = _splat_isotropic((30, 40), y, x, 1.0, 2.0, row_shift=shift)
    rows = np.arange(30)[:, None, None]
    cols = np.arange(40)[None, :, None]
    brute = np.exp(
        -0.5 * (((rows - y) / 2.0) ** 2 + ((cols - x - shift[:, None, None]) / 2.0) ** 2)
    ).sum(-1)
    np.testing.assert_allclose(img, brute, atol=1e-5)


def test_mtf_values_and_apply_mtf():
    c1, c2, c3 = 0.05, 0.5, 2.5
    assert float(mtf(0.0, c1, c2, c3)) == pytest.approx(1.0)
    # at q = 2 c2 (in Nyquist units) the falling part is at half height
    assert float(mtf(2 * c2, c1, c2, c3)) == pytest.approx((1 - c1) / 2 + c1)
    q = np.linspace(0, 1, 50)
    assert np.all(np.diff(mtf(q, c1, c2, c3)) < 0)
    rng = np.random.default_rng(2)
    img = rng.normal(10, 1, (64, 48))
    blurred = apply_mtf(img, c1, c2, c3)
    assert blurred.mean() == pytest.approx(img.mean(), rel=1e-12)
    assert blurred.std() < 0.8 * img.std()
    np.testing.assert_allclose(apply_mtf(img, 1.0, c2, c3), img, atol=1e-10)


def test_poisson_counts_statistics():
    rng = np.random.default_rng(3)
    lam = np.full((200, 200), 2.5)
    counts = poisson_counts(lam, rng, dose_scale=4.0)
    assert np.all(counts == np.round(counts))
    assert counts.mean() == pytest.approx(10.0, rel=0.01)
    assert counts.var() == pytest.approx(10.0, rel=0.03)
