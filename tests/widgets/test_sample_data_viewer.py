"""The sample-data contributions open in a real napari viewer (run under Xvfb)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_atomnet._samples import SAMPLES

pytestmark = pytest.mark.gui


@pytest.mark.parametrize("key", list(SAMPLES))
def test_sample_opens_with_truth_layers(make_napari_viewer, key):
    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-atomnet", key)
    names = [layer.name for layer in layers]
    assert names == [key, f"Truth ({key})"]
    image, truth = viewer.layers[key], viewer.layers[f"Truth ({key})"]
    assert image.data.ndim == 2
    np.testing.assert_allclose(truth.scale, image.scale)
    if SAMPLES[key].kind == "atoms":
        assert {"y", "x", "class"} <= set(truth.features.columns)
        assert len(truth.features) == len(truth.data) > 50
    else:
        assert truth.data.max() == len(truth.features)


def test_screenshot_shows_the_image_not_black(make_napari_viewer):
    from skimage.transform import resize

    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-atomnet", "perovskite_haadf")
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(float)
    grey = shot.mean(axis=2)
    rows = np.nonzero(grey.max(axis=1) > 20)[0]
    cols = np.nonzero(grey.max(axis=0) > 20)[0]
    assert len(rows) > 100 and len(cols) > 100, "nothing drawn: the canvas is black"
    drawn = grey[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    # what is drawn is this image: it matches the data, resampled to the drawn size
    data = viewer.layers["perovskite_haadf"].data.astype(float)
    expected = resize(data, drawn.shape, anti_aliasing=True)
    r = np.corrcoef(drawn.ravel(), expected.ravel())[0, 1]
    assert r > 0.8, r
    assert abs(drawn.shape[0] / drawn.shape[1] - 1) < 0.05  # square image, square on screen

    viewer.layers["Truth (perovskite_haadf)"].visible = True
    with_truth = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(float)
    colourful = np.ptp(with_truth, axis=2) > 60  # the red/cyan truth markers
    assert colourful.mean() > 0.01, colourful.mean()
    assert (np.ptp(shot, axis=2) > 60).mean() < 0.001  # none before: the image is grey
