"""A detection model that learnt one physical scale: images of other samplings are resampled."""

from __future__ import annotations

import numpy as np
import pytest

from napari_atomnet.core.metrics import detection_scores
from napari_atomnet.models.detector import detect_atoms, sampling_zoom
from napari_atomnet.models.registry import load_model
from napari_atomnet.synth import render_gaussians

SAMPLING = [0.114, 0.126]  # Å/px, as atomnet-hrtem's card


def _lattice(spacing, sigma, shape=(200, 230), seed=0):
    """Square lattice of Gaussian columns (y, x truth) with Poisson noise."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[spacing / 2 : shape[0] : spacing, spacing / 3 : shape[1] : spacing]
    truth = np.column_stack([ys.ravel(), xs.ravel()]) + rng.normal(0, 0.3, (ys.size, 2))
    clean = render_gaussians(shape, truth[:, 0], truth[:, 1], 200.0, sigma) + 20.0
    return rng.poisson(clean).astype(np.float32), truth


@pytest.fixture
def scaled_model(tmp_path):
    """A LoG detector tuned to columns of sigma 2 px, as if learnt at 0.114-0.126 Å/px."""
    from conftest import make_log_detector

    path = make_log_detector(
        tmp_path / "scaled.onnx", sigma=2.0, card={"sampling_angstrom": SAMPLING}
    )
    return load_model(path, task="detection")


def test_the_zoom_follows_the_pixel_size(scaled_model):
    assert sampling_zoom(scaled_model, 0.012)[0] == 1.0  # inside the range: as it is
    zoom, record = sampling_zoom(scaled_model, 0.006)
    assert zoom == pytest.approx(0.5) and record["pixel_size_angstrom"] == pytest.approx(0.06)
    assert sampling_zoom(scaled_model, 0.018)[0] == pytest.approx(1.5)
    zoom, record = sampling_zoom(scaled_model, None)
    assert zoom == 1.0 and "pixel size unknown" in record["sampling"]
    general = load_model("atomnet-detect", task="detection")  # no physical scale: never
    assert sampling_zoom(general, 0.006) == (1.0, {})


@pytest.mark.parametrize(
    ("pixel_size_nm", "spacing", "sigma"), [(0.006, 28.0, 4.0), (0.018, 10.0, 1.33)]
)
def test_an_image_at_another_sampling_is_detected_at_the_models(
    scaled_model, pixel_size_nm, spacing, sigma
):
    """Columns twice (or 2/3 of) the size the model learnt: found through the resampling,
    at their positions in the input's pixels."""
    image, truth = _lattice(spacing, sigma)
    found = detect_atoms(image, scaled_model, polarity="bright", pixel_size_nm=pixel_size_nm)
    scores = detection_scores(
        found.table[["y", "x"]].to_numpy(),
        truth,
        0.25 * spacing,
        shape=image.shape,
        border=spacing / 2,
    )
    assert scores["f1"] >= 0.99
    # positions in the input's pixels: the matched errors are small and unbiased
    from scipy.spatial import cKDTree

    d, i = cKDTree(found.table[["y", "x"]].to_numpy()).query(truth)
    close = d < 0.25 * spacing
    err = found.table[["y", "x"]].to_numpy()[i[close]] - truth[close]
    assert np.abs(err.mean(axis=0)).max() < 0.1 * sigma and np.sqrt((err**2).mean()) < 0.3 * sigma
    zoom = 10 * pixel_size_nm / 0.12
    assert found.params["zoom"] == pytest.approx(zoom)
    boxes = found.table["y1"] - found.table["y0"]
    assert (boxes > 0).all()


def test_inside_the_range_or_unknown_nothing_is_resampled(scaled_model):
    image, _ = _lattice(15.0, 2.0)
    plain = detect_atoms(image, scaled_model, polarity="bright")
    assert "pixel size unknown" in plain.params["sampling"]
    inside = detect_atoms(image, scaled_model, polarity="bright", pixel_size_nm=0.0121)
    np.testing.assert_array_equal(plain.table[["y", "x"]], inside.table[["y", "x"]])
    assert inside.params["zoom"] == 1.0
