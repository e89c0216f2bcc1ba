import numpy as np
import pytest
from scipy import ndimage

from napari_atomnet.core.detect import detect_peaks_classical, estimate_spacing
from napari_atomnet.core.preprocess import LocalNormalizer, local_normalize
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


@pytest.mark.parametrize(
    ("shape", "sigma"), [((203, 157), 17.0), ((96, 130), 4.0), ((64, 64), 61.0)]
)
def test_local_normalizer_matches_a_direct_computation(shape, sigma):
    # the maps: block means of I and I² (blocks of sigma // 4 px, the ragged edge mirrored),
    # smoothed by the Gaussian on the coarse grid, and interpolated bilinearly between block
    # centres, held at the edge values beyond them; computed here the plain way in float64
    rng = np.random.default_rng(3)
    img = 500 + 40 * rng.normal(size=shape) + np.linspace(0, 300, shape[1])[None, :]
    k = max(1, int(sigma // 4))
    padded = np.pad(img, ((0, -shape[0] % k), (0, -shape[1] % k)), mode="symmetric")
    blocks = padded.reshape(padded.shape[0] // k, k, padded.shape[1] // k, k)
    mean = ndimage.gaussian_filter(blocks.mean(axis=(1, 3)), sigma / k, mode="reflect")
    sq = ndimage.gaussian_filter((blocks**2).mean(axis=(1, 3)), sigma / k, mode="reflect")
    var = np.maximum(sq - mean**2, 1e-2 * np.maximum(sq - mean**2, 0).mean())
    offset, size = (-9, 5), (shape[0] + 12, shape[1] - 5)  # a window past the top edge
    rows = np.clip((np.arange(size[0]) + offset[0] - (k - 1) / 2) / k, 0, mean.shape[0] - 1)
    cols = np.clip((np.arange(size[1]) + offset[1] - (k - 1) / 2) / k, 0, mean.shape[1] - 1)
    grid = np.meshgrid(rows, cols, indexing="ij")
    local_mean = ndimage.map_coordinates(mean, grid, order=1)
    inv_std = ndimage.map_coordinates(1 / np.sqrt(var), grid, order=1)
    window = np.pad(img, 20, mode="reflect")[20 + offset[0] :, 20 + offset[1] :][
        : size[0], : size[1]
    ]
    expected = (window - local_mean) * inv_std

    norm = LocalNormalizer(img, sigma)
    out = norm.apply(window, offset)
    assert out.dtype == np.float32 and out.shape == size
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    # a tile is normalised as the whole image is there, and scale=-1 flips the sign exactly
    whole = norm.apply(img)
    np.testing.assert_array_equal(norm.apply(img[30:50, 7:90], (30, 7)), whole[30:50, 7:90])
    np.testing.assert_array_equal(norm.apply(img, scale=-1.0), -whole)
    assert norm.apply(img[:0], (0, 0)).shape == (0, shape[1])


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
