import numpy as np
import pytest

from napari_atomnet.core.detect import detect_peaks_classical, estimate_spacing
from napari_atomnet.core.preprocess import local_normalize
from napari_atomnet.synth import render_gaussians


def test_local_normalize_removes_gradient_and_contrast_scale():
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:12, 0:12] * 16.0 + 8.0
    atoms = render_gaussians((192, 192), yy.ravel(), xx.ravel(), 1.0, 2.0)
    ramp = np.linspace(0, 5, 192)[None, :]  # strong background gradient
    low = local_normalize(10 * atoms + ramp + rng.normal(0, 0.01, atoms.shape), sigma=24)
    high = local_normalize(1000 * atoms + 100 * ramp, sigma=24)
    # the gradient is gone: left and right halves have the same statistics (away from the
    # borders, where mirroring cannot continue a linear ramp)
    inner = low[24:-24, 24:-24]
    assert abs(inner[:, :72].mean() - inner[:, 72:].mean()) < 0.05
    assert abs(low.std() - 1) < 0.15 and abs(high.std() - 1) < 0.15
    # the atoms are where they were, on the same scale whatever the dose
    assert np.corrcoef(low.ravel(), high.ravel())[0, 1] > 0.99


@pytest.mark.parametrize("spacing", [7.0, 12.5, 31.0])
def test_estimate_spacing_square_lattice(spacing):
    n = int(400 // spacing)
    yy, xx = np.mgrid[0:n, 0:n] * spacing + 5.0
    img = render_gaussians((400, 400), yy.ravel(), xx.ravel(), 1.0, spacing * 0.15)
    assert estimate_spacing(img) == pytest.approx(spacing, rel=0.03)


def test_classical_detector_finds_isolated_peaks(square_lattice):
    image, truth = square_lattice
    found = detect_peaks_classical(image)
    d = np.hypot(*(found[["y", "x"]].to_numpy()[:, None, :] - truth[None]).transpose(2, 0, 1))
    assert len(found) == len(truth)
    assert np.all(d.min(axis=1) < 1.0)  # every peak within a pixel of a true one


def test_classical_detector_dark_atoms(square_lattice):
    image, truth = square_lattice
    found = detect_peaks_classical(image.max() - image, polarity="auto")
    assert len(found) == len(truth)
